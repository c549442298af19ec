"""stagegate's sidecar proxy, one package per part (README "Where things are"; rules in .importlinter).

catalog (pure) ← shared ← modes ← dataplane | ops ← app: each part imports only the parts to its left.
"""
