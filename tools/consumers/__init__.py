"""Who sends what: the consumer audit of access and proxy logs (``audit``) and the offenders report with alias
suggestions (``offenders``). docs/preflight.md, docs/offenders.md.

May import: ``tools.clients``, ``tools.shared``, ``proxy.catalog``. Never argparse.
"""
