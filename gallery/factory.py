"""Opens the configured gallery backend (apart from both, so neither imports the other)."""

from __future__ import annotations

from pathlib import Path

from gallery.store import Gallery


def open_gallery(db_path: Path, url: str | None, scoring: str = "centroid", index: object = "auto") -> Gallery:
    """SQLite at `db_path` (searched by `index`: a mode or a `gallery.live_index.IndexConfig`),
    or PostgreSQL/pgvector when `url` is a postgresql:// URL (searched by its HNSW indexes)."""
    if url:
        from gallery.postgres import PgGallery

        return PgGallery(url, scoring)
    from gallery.sqlite import SqliteGallery

    return SqliteGallery(db_path, scoring, index)


def index_config(settings) -> object:
    """The SQLite gallery's index settings (GALLERY_INDEX, GALLERY_ANN_*), as gallery.live_index takes them."""
    from gallery.ann import AnnParameters
    from gallery.live_index import IndexConfig

    return IndexConfig(
        mode=settings.gallery_index,
        ann_min_faces=settings.gallery_ann_min_faces,
        parameters=AnnParameters(candidates=settings.gallery_ann_candidates),
        save_interval_s=settings.gallery_index_save_s,
    )
