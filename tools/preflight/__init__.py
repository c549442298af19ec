"""Week 0: the exit criteria (``checks``), Redis latency (``redis_latency``) and the fallback drill
(``drill``). docs/preflight.md.

May import: ``tools.backups``, ``tools.consumers``, ``tools.clients``, ``tools.shared``, ``proxy.catalog``.
Never argparse.
"""
