"""The command layer of ``stagectl``: argparse lives here and only here. Each module registers the commands of
one part and turns parsed options into the typed requests of the workflows below (``migrate``, ``preflight``,
``rollout``, ``ops``, ``offenders``); ``actors`` names who runs a mutating command.

May import: every part of ``tools``; of the proxy only ``proxy.catalog`` and ``proxy.shared``.
"""
