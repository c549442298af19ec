"""Backups and restore tests: ``pg_dump`` with checksums (``backup``), a timed restore into a scratch database
(``restore``). docs/preflight.md.

May import: ``tools.clients``, ``tools.shared``. Never argparse.
"""
