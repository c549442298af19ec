"""stagegate: the validating sidecar proxy."""
