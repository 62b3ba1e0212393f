"""``uploads_present``: which upload ids have a row (the sweep of upload folders left without
one asks it), on both engines; more ids than one query takes at once (SQLite's batches)."""

from __future__ import annotations

from collections.abc import Callable

from heaper_trio.records import UploadRecord
from heaper_trio.settings import Settings
from tests.test_storage import NOW, opened
from tests.test_storage_contract import H1, H2, add_users, new_heap


async def test_uploads_present_names_the_ids_with_a_row(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        for upload_id, h in (("up1", H1), ("up2", H2)):
            await storage.save_upload(
                UploadRecord(upload_id, "u1", "h1", "b", h, 25, 10, "a", "x/y", NOW, NOW + 9)
            )
        asked = [f"gone-{i}" for i in range(1200)] + ["up2", "up1"]
        assert await storage.uploads_present(asked) == {"up1", "up2"}
        assert await storage.uploads_present([]) == set()
        await storage.delete_upload("up1")
        assert await storage.uploads_present(asked) == {"up2"}


async def test_has_upload_of_a_hash_while_any_upload_row_has_it(
    make_settings: Callable[..., Settings],
) -> None:
    """An expired upload's published bytes stay while another upload of the hash lives."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        for upload_id, block in (("up1", "b1"), ("up2", "b2")):
            await storage.save_upload(
                UploadRecord(upload_id, "u1", "h1", block, H1, 25, 10, "a", "x/y", NOW, NOW + 9)
            )
        assert (await storage.has_upload_of(H1), await storage.has_upload_of(H2)) == (True, False)
        await storage.delete_upload("up1")
        assert await storage.has_upload_of(H1)
        await storage.delete_upload("up2")
        assert not await storage.has_upload_of(H1)
