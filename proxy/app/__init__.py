"""The process: settings, wiring of the parts, listeners and shutdown, the CLI, --workers, the demo upstream.

The top layer: may import every part of proxy/; nothing in proxy/ imports it.
"""
