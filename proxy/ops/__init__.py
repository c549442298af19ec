"""The ops plane: the admin listener's routes (/_ops/*, /metrics) and the Alertmanager webhook.

May import proxy.catalog, proxy.shared and proxy.modes; never the data plane, the app or the tools.
"""
