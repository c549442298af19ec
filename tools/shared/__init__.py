"""The tools' small shared home: errors and exit codes, progress output, time parsing.

May import: nothing of the tools (the standard library, ``proxy.shared``).
"""
