"""The database adapter: schema, engine, bulk paths and queries (SQLite and PostgreSQL)."""
