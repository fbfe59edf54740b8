"""Opens the configured gallery backend (apart from both, so neither imports the other)."""

from __future__ import annotations

from pathlib import Path

from gallery.store import Gallery


def open_gallery(db_path: Path, url: str | None, scoring: str = "centroid") -> Gallery:
    """SQLite at `db_path`, or PostgreSQL/pgvector when `url` is a postgresql:// URL."""
    if url:
        from gallery.postgres import PgGallery

        return PgGallery(url, scoring)
    from gallery.sqlite import SqliteGallery

    return SqliteGallery(db_path, scoring)
