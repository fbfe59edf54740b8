"""Use cases on the enrolled people themselves: list, read, rename, merge, delete; their face samples.

The gallery is synchronous (SQLite, psycopg); each call runs in a worker thread so the event
loop keeps serving.
"""

from __future__ import annotations

import asyncio

from errors import SameIdentity
from gallery.store import Gallery, Identity, StoredFace


class People:
    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    async def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]:
        return await asyncio.to_thread(self.gallery.list, limit, offset)

    async def get(self, identity_id: str) -> Identity:
        return await asyncio.to_thread(self.gallery.get, identity_id)

    async def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity:
        return await asyncio.to_thread(self.gallery.update, identity_id, name, metadata)

    async def merge(self, target_id: str, source_id: str) -> Identity:
        """Move the source's faces into the target and delete the source."""
        if source_id == target_id:
            raise SameIdentity("source_id is the identity itself: nothing to merge")
        return await asyncio.to_thread(self.gallery.merge, target_id, source_id)

    async def faces(self, identity_id: str) -> list[StoredFace]:
        """The person's samples, oldest first, each with what was measured at its enrollment."""
        return await asyncio.to_thread(self.gallery.faces, identity_id)

    async def delete_face(self, identity_id: str, face_id: int) -> Identity:
        """Remove one sample (FaceNotFound, LastFace: a person keeps at least one; delete the person instead)."""
        return await asyncio.to_thread(self.gallery.delete_face, identity_id, face_id)

    async def delete(self, identity_id: str) -> None:
        await asyncio.to_thread(self.gallery.delete, identity_id)

    async def delete_all(self) -> int:
        return await asyncio.to_thread(self.gallery.delete_all)

    async def counts(self) -> tuple[int, int]:
        """(identities, face samples) for the gallery gauges."""
        return await asyncio.to_thread(lambda: (self.gallery.list(1, 0)[0], self.gallery.face_count()))

    async def index_status(self) -> dict:
        """Which search index the gallery uses (exact / ann / pgvector), its library and generation."""
        return await asyncio.to_thread(self.gallery.index_status)
