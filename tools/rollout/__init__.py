"""Week 4 from evidence: the gate (``gate``), the canary driver (``driver``) and Day 5 in one pipeline
(``normalize``). docs/rollout.md.

May import: ``tools.migration``, ``tools.backups``, ``tools.clients``, ``tools.shared``, ``proxy.catalog``.
Never argparse.
"""
