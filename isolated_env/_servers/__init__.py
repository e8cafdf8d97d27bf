"""How servers are found, started, shared between processes and reaped."""
