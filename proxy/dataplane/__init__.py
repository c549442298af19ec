"""The request path: routing to an endpoint, body inspection and rewriting, forwarding, the upstream client.

May import proxy.catalog, proxy.shared and the mode view (proxy.modes); never the ops plane, the app or the tools.
"""
