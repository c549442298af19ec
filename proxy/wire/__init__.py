"""The admin API's shapes, typed once: the proxy builds its answers from them and ``stagectl`` reads answers
into them (docs/openapi.yaml describes the same; tests/test_wire.py keeps the two in step).

Pure: no I/O, no aiohttp. May import: ``proxy.catalog``.
"""
