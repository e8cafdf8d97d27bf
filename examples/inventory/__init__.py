"""A small async inventory service: products in PostgreSQL, a stock cache in Redis, CSV exports on disk."""
