"""The mode store: records, the store protocol (memory, Redis), the in-memory view, refresh, changes.

May import proxy.catalog and proxy.shared; never the data plane, the ops plane or aiohttp.
"""
