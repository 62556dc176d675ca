"""Persistent state: API keys now, usage records later. SQLite by default, PostgreSQL by URL."""
