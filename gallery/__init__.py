"""The persistent gallery of enrolled people: interface and types, SQLite, PostgreSQL, backups, bulk import."""
