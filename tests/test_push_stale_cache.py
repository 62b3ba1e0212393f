"""The document cache hears nothing of another process's commits. A restore there raises the
block's sync_version; a client pushing with the new version must not be answered from this
process's stale entry (``version_mismatch`` with the old version, for ever): a mismatch
against a cached entry is judged against storage."""

from __future__ import annotations

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.documents import DocumentService

from .test_push_unchecked import _created, _edit
from .test_sync import push


async def test_a_restore_by_another_process_does_not_wedge_this_ones_cache(
    admin: HeaperClient, server: RunningServer
) -> None:
    from .test_sync import new_heap

    services = server.services
    heap = await new_heap(admin)
    block = await _created(admin, heap["id"])
    _edit(block, "second")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok", r.text  # cached in this process now
    block.synced = block.doc.get_state()
    # "another process": its own DocumentService (own cache) over the same database
    other = DocumentService(services.storage, services.documents.settings)
    user = await services.storage.get_user(admin.user_id)
    assert user is not None
    new_version = await other.history.restore(user, block.id, 1)
    assert new_version == 2
    r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
    assert r.json()["blocks"][0]["sync_version"] == 2, r.text  # storage says 2
    _edit(block, "after the restore")
    r = await push(admin, block.push_item(heap["id"], sync_version=2))
    answer = r.json()["blocks"][0]

    assert answer["status"] == "ok" or answer.get("sync_version") == 2, answer
