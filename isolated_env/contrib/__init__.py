"""Optional helpers for application code, outside the isolation core.

Nothing here is imported by ``import isolated_env``; import a module by name, e.g.
``from isolated_env.contrib.resilience import resilient_client``.
"""
