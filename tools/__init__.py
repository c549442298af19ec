"""stagectl: rollout tools for stagegate."""
