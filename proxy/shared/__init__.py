"""Helpers every part uses: JSON logs, Prometheus metrics, problem+json, secrets, stopping tasks.

May import proxy.catalog only.
"""
