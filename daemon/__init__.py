"""Cabinet: the daemon (domain, persistence, adapters)."""
