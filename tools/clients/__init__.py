"""Clients of what the tools talk to: PostgreSQL (``db``), the proxy's admin API (``admin_api``), Prometheus
(``prom``), and the one way to choose the catalog a command classifies with (``catalogs``).

May import: ``tools.shared``, ``proxy.catalog``, ``proxy.shared``.
"""
