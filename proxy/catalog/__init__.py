"""The stage catalog, endpoint paths and the canary hash: pure functions, no I/O.

Imports nothing of ours and no I/O library; the tools import only this part (and proxy.shared).
"""
