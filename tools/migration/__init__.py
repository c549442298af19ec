"""Normalizing stored stages: the batched, resumable engine (``engine``, its SQL in ``sql`` and
``migrate.sql``), a run's life and lock (``runs``), status/verify/revert (``admin``), the whole run as one call
(``run``), and the legacy table's test data (``seed``). docs/migrate.md.

May import: ``tools.clients``, ``tools.shared``, ``proxy.catalog``. Never argparse.
"""
