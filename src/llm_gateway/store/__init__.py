"""Persistent state: API keys and usage records. SQLite by default, PostgreSQL by URL;
tables in ``tables``, engine and migrations in ``database``."""
