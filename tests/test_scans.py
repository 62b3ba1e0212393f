"""Folder scans over real servers on both engines: blocks and index rows made together,
incremental rescans, missing files and their return, .heaperignore, duplicates, traversal and
symlink attempts, progress and final events on both live channels, abort (within a second,
everything read so far committed, nothing half-written) and shutdown, reindex and regenerate.
Pure parts (path rules, the walker, the CRDT helpers) are tested without a server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio
from PIL import Image

from heaper_trio import crdt
from heaper_trio.app import RunningServer, run_server
from heaper_trio.client import HeaperClient
from heaper_trio.errors import BadRequest, Forbidden
from heaper_trio.protocol import messages as m
from heaper_trio.records import BlockChange, BlockQuery, ScanBatch
from heaper_trio.services.scans.walk import (
    FileSeen,
    FolderSeen,
    FolderWalker,
    allowed_bases,
    resolve_scan_path,
)
from heaper_trio.settings import Settings

from .conftest import assert_error
from .live_client import live_client
from .test_sync import new_heap

NOW = 1_700_000_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png(size: tuple[int, int] = (40, 20)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (0, 128, 255)).save(out, "PNG")
    return out.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


async def files_v0(client: HeaperClient, block_id: str) -> dict[str, Any]:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    doc = pycrdt.Doc()
    doc.apply_update(base64.b64decode(r.json()["blocks"][0]["update"]))
    return {k: dict(v) for k, v in doc.get("files_v0", type=pycrdt.Map).items()}


async def scan(
    client: HeaperClient, heap_id: str, path: str | Path, timeout: float = 60
) -> dict[str, Any]:
    """Start a scan and wait for its end; the final snapshot."""
    r = await client.post("/api/scan_folder", json={"heap_id": heap_id, "path": str(path)})
    assert r.status_code == 200, r.text
    return await finished(client, r.json()["scan_id"], timeout)


async def finished(client: HeaperClient, scan_id: str, timeout: float = 60) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            # active_scans lists running jobs only; the history has them all
            scans = (await client.get("/api/scans?limit=100")).json()["scans"]
            [job] = [s for s in scans if s["scan_id"] == scan_id]
            if job["state"] in ("done", "aborted", "failed"):
                return dict(job)
            await trio.sleep(0.05)


async def check_consistent(server: RunningServer, heap_id: str, root: Path) -> dict[str, Any]:
    """Every index row points at a block that holds what the row says, and every file block
    of the heap has a row: nothing half-written."""
    storage = server.services.storage
    rows = await storage.unseen_scan_entries(heap_id, str(root), "-", "", 1_000_000)
    blocks = await storage.get_blocks([r.block_id for r in rows])
    for r in rows:
        block = blocks[r.block_id]
        if r.kind == "file":
            assert block.type == "file" and f"{r.hash}:{r.size}" in block.files, r
            assert block.files[f"{r.hash}:{r.size}"].get("missing") is None
            assert r.folder_id in block.relations
        else:
            assert block.type == "folder", r
    files = [r for r in rows if r.kind == "file"]
    counts = await storage.count_blocks(heap_id, BlockQuery(types=("file",)))
    assert counts.get("file", 0) == len(files), (counts, len(files))
    return {"files": len(files), "folders": len(rows) - len(files)}


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize("title", ["a.jpg", "", "  spaced  name.txt ", "line\nbreak", "ünï 😀"])
def test_new_server_block_projects_as_written(title: str) -> None:
    entry = {
        "hash": "a" * 64,
        "name": title,
        "file_size": 3,
        "width": 2,
        "duration": 1.0,
        "source": "scan",
    }
    update, sv, projection = crdt.new_server_block(
        block_type="file", title=title, files={"a" * 64 + ":3": entry}, tags=["t2", "t1"]
    )
    doc = crdt.BlockDocument.load(None, [update])
    assert doc.project() == projection and doc.state_vector() == sv
    assert doc.full_state() == update


def test_patch_file_entry_keeps_client_fields() -> None:
    update, _, _ = crdt.new_server_block(
        block_type="file", title="x", files={"k:1": {"hash": "k", "width": 1}}
    )
    doc = crdt.BlockDocument.load(None, [update])
    doc.patch_file_entry("k:1", {"thumbnails": {"small": "t"}})  # as a client would add
    assert doc.patch_file_entry("k:1", {"width": 1, "height": None}) == crdt.EMPTY_UPDATE
    assert doc.patch_file_entry("k:1", {"missing": True}) != crdt.EMPTY_UPDATE
    assert doc.project().files["k:1"] == {
        "hash": "k",
        "width": 1,
        "missing": True,
        "thumbnails": {"small": "t"},
    }
    assert doc.patch_file_entry("n:2", {"hash": "n"}, create=False) == crdt.EMPTY_UPDATE
    doc.patch_file_entry("n:2", {"hash": "n"}, remove=["k:1"])
    assert doc.project().files == {"n:2": {"hash": "n"}}


def test_scan_paths_are_confined(tmp_path: Path) -> None:
    root, data = tmp_path / "root", tmp_path / "root" / "data"
    for p in (root / "u1" / "photos", root / "u2", data, tmp_path / "outside"):
        p.mkdir(parents=True, exist_ok=True)
    write(root / "u1" / "file.txt", "x")
    (root / "u1" / "escape").symlink_to(tmp_path / "outside")
    (root / "u1" / "inside").symlink_to(root / "u1" / "photos")
    user = allowed_bases([root], "u1", False)
    admin = allowed_bases([root], "admin", True)
    ok = resolve_scan_path
    assert ok(str(root / "u1" / "photos"), user, str(data)) == str(root / "u1" / "photos")
    assert ok("photos", user, str(data)) == str(root / "u1" / "photos")
    assert ok(str(root / "u1" / "inside"), user, str(data)) == str(root / "u1" / "photos")
    assert ok(str(root / "u2"), admin, str(data)) == str(root / "u2")
    for bad in (
        str(root / "u2"),
        str(root),
        "../u2",
        str(root / "u1" / ".." / "u2"),
        str(root / "u1" / "escape"),
        str(tmp_path / "outside"),
        "/",
        "/etc",
        str(root / "u1" / "photos" / ".."),
        "photos/../../u2",
    ):
        with pytest.raises(Forbidden) as e:
            ok(bad, user, str(data))
        assert e.value.code == "scan_path_forbidden", bad
    for bad in (str(data), str(data / "x"), str(root / "data")):
        with pytest.raises(Forbidden):
            ok(bad, admin, str(data))
    with pytest.raises(BadRequest) as e2:
        ok(str(root / "u1" / "file.txt"), user, str(data))
    assert e2.value.code == "not_a_directory"
    with pytest.raises(BadRequest):
        ok(str(root / "u1" / "nope"), user, str(data))
    with pytest.raises(Forbidden) as e:
        ok(str(root / "u1"), [], str(data))
    assert e.value.code == "scanning_disabled"


def test_walker_honours_heaperignore_and_skips_links(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root / ".heaperignore", "*.log\nbuild/\n!keep.log\n")
    for rel in (
        "a.txt",
        "x.log",
        "keep.log",
        "build/out.bin",
        "sub/b.txt",
        "sub/c.log",
        "sub/deep/d.tmp",
        "sub/deep/e.txt",
        "dl.part",
    ):
        write(root / rel, rel)
    write(root / "sub" / ".heaperignore", "deep/*.tmp\n!c.log\n")
    (root / "link.txt").symlink_to(root / "a.txt")
    (root / "linkdir").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    (root / b"bad\xffname".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    walker = FolderWalker(str(root))
    seen = []
    while batch := walker.next_batch(max_items=3):
        seen += batch
    files = sorted(os.path.relpath(s.path, root) for s in seen if isinstance(s, FileSeen))
    folders = [os.path.relpath(s.path, root) for s in seen if isinstance(s, FolderSeen)]
    assert files == ["a.txt", "keep.log", "sub/b.txt", "sub/c.log", "sub/deep/e.txt"]
    assert sorted(folders) == [".", "sub", "sub/deep"]
    assert walker.skipped == 8  # x.log, build/, d.tmp, dl.part, 2 links, fifo, bad name
    for s in seen:  # a folder comes before what is in it
        if isinstance(s, FileSeen):
            assert (
                os.path.relpath(s.folder, root)
                in folders[: folders.index(os.path.relpath(s.folder, root)) + 1]
            )


# -- over a server -----------------------------------------------------------------------------


@pytest.fixture
async def boss(scan_server: RunningServer) -> Any:
    async with HeaperClient(scan_server.url) as c:
        await c.login()
        yield c


async def test_scan_makes_file_and_folder_blocks(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(boss)
    tree = roots / "photos"
    image = write(tree / "trip" / "sea.png", png((40, 20)))
    write(tree / "trip" / "notes.txt", "hello")
    write(tree / "copy.txt", "hello")  # a duplicate by content
    write(tree / "empty" / ".keep", b"")
    async with (
        live_client(scan_server.url) as live,
        live_client(scan_server.url, "/api/ws") as legacy,
    ):
        await live.open("events", boss.access_token or "")
        await live.expect(m.Authenticated)
        await legacy.ws.send_message(json.dumps({"token": boss.access_token}))
        assert json.loads(await legacy.ws.get_message())["type"] == "authenticated"
        job = await scan(boss, heap["id"], tree)
        got = []
        with trio.move_on_after(2):
            while not got or got[-1]["type"] == "scan.progress":
                got.append(json.loads(await legacy.ws.get_message()))
        assert got[-1] == {
            "type": "scan.done",
            "scan_id": job["scan_id"],
            "heap_id": heap["id"],
            "path": str(tree),
            "files_seen": 4,
            "files_done": 4,
            "bytes": job["bytes"],
        }
        live_got = []
        while not live_got or live_got[-1]["type"] == "scan.progress":
            evt = json.loads((await live.expect(m.Stateless)).payload)
            live_got.append(evt)
        assert live_got[-1] == got[-1]
    assert (job["state"], job["files_new"], job["folders"], job["duplicates"]) == ("done", 4, 3, 1)
    storage = scan_server.services.storage
    rows = await storage.scan_entries(heap["id"], [str(image), str(tree / "trip")])
    entry = (await files_v0(boss, rows[str(image)].block_id))[
        f"{sha(png((40, 20)))}:{image.stat().st_size}"
    ]
    assert entry["name"] == "sea.png" and entry["mime_type"] == "image/png"
    assert (entry["width"], entry["height"]) == (40, 20)
    assert entry["mtime"] == image.stat().st_mtime_ns // 1_000_000
    assert entry["source_path"] == str(image) and "missing" not in entry
    block = (await boss.post(f"/api/block/{rows[str(image)].block_id}")).json()
    assert block["block"]["title"] == "sea.png" and block["block"]["type"] == "file"
    assert block["relations"]["raw"] == {rows[str(tree / "trip")].block_id: {"type": "tag"}}
    folder = (await boss.post(f"/api/block/{rows[str(tree / 'trip')].block_id}")).json()
    assert folder["block"]["type"] == "folder" and folder["block"]["title"] == "trip"
    # served in place, not copied
    r = await boss.get(f"/api/file/{entry['file_id']}/raw/sea.png")
    assert r.status_code == 200 and r.content == image.read_bytes()
    assert not scan_server.services.files.store_path(entry["hash"]).exists()
    await check_consistent(scan_server, heap["id"], tree)


async def test_rescans_are_incremental_and_mark_missing(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(boss)
    tree = roots / "docs"
    for i in range(20):
        write(tree / f"d{i % 3}" / f"f{i}.txt", f"file {i}")
    first = await scan(boss, heap["id"], tree)
    assert (first["files_new"], first["files_done"]) == (20, 20)
    storage = scan_server.services.storage
    before = {
        r.path: r for r in await storage.unseen_scan_entries(heap["id"], str(tree), "-", "", 1000)
    }
    seqs = {
        b.id: b.last_seq
        for b in (await storage.get_blocks([r.block_id for r in before.values()])).values()
    }

    again = await scan(boss, heap["id"], tree)  # nothing changed: nothing hashed or written
    assert (again["files_unchanged"], again["bytes_hashed"], again["files_new"]) == (20, 0, 0)
    assert {b.id: b.last_seq for b in (await storage.get_blocks(list(seqs))).values()} == seqs

    changed, gone, new = tree / "d0" / "f0.txt", tree / "d1" / "f1.txt", tree / "d2" / "n.txt"
    write(changed, "changed content")
    os.utime(changed, ns=(1, 1_000_000_000))
    gone.unlink()
    write(new, "new")
    write(tree / "d2" / ".heaperignore", "f2.txt\n")
    third = await scan(boss, heap["id"], tree)
    assert (third["files_changed"], third["files_new"], third["files_missing"]) == (1, 1, 2)
    rows = await storage.scan_entries(
        heap["id"], [str(changed), str(gone), str(tree / "d2" / "f2.txt")]
    )
    assert rows[str(changed)].block_id == before[str(changed)].block_id  # same block
    files = await files_v0(boss, rows[str(changed)].block_id)
    assert (
        list(files) == [f"{sha(b'changed content')}:15"]
        and files[f"{sha(b'changed content')}:15"]["mtime"] == 1000
    )
    assert rows[str(gone)].missing and rows[str(tree / "d2" / "f2.txt")].missing
    lost = await files_v0(boss, rows[str(gone)].block_id)
    assert lost[f"{sha(b'file 1')}:6"]["missing"] is True

    write(gone, "file 1")  # back, but its mtime differs: read again, un-marked
    (tree / "d2" / ".heaperignore").unlink()
    fourth = await scan(boss, heap["id"], tree)
    assert fourth["files_missing"] == 0 and fourth["files_seen"] == 21
    back = await storage.scan_entries(heap["id"], [str(gone), str(tree / "d2" / "f2.txt")])
    assert not any(r.missing for r in back.values())
    assert "missing" not in (await files_v0(boss, back[str(gone)].block_id))[f"{sha(b'file 1')}:6"]
    assert (await check_consistent(scan_server, heap["id"], tree))["files"] == 21


async def test_scan_paths_and_permissions(
    boss: HeaperClient, scan_server: RunningServer, roots: Path, tmp_path: Path
) -> None:
    heap = await new_heap(boss)
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "secret")
    (roots / "shared").mkdir()
    (roots / "shared" / "out").symlink_to(outside)
    write(roots / "file.txt", "x")

    async def attempt(
        path: str, status: int, code: str, client: HeaperClient = boss, heap_id: str = heap["id"]
    ) -> None:
        r = await client.post("/api/scan_folder", json={"heap_id": heap_id, "path": path})
        assert_error(r, status, code)

    for path in (
        str(outside),
        "/",
        "/etc",
        str(roots / ".." / "outside"),
        "../outside",
        str(roots / "shared" / "out"),
        str(roots / "shared" / "out" / ".."),
        str(scan_server.services.settings.data_path),
    ):
        await attempt(path, 403, "scan_path_forbidden")
    await attempt(str(roots / "file.txt"), 400, "not_a_directory")
    await attempt(str(roots / "nope"), 400, "not_a_directory")
    await attempt("a\x00b", 400, "invalid_value")
    await attempt(str(roots), 403, "heap_forbidden", heap_id="not-my-heap")
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"]})
    assert_error(r, 404, "nothing_scanned")  # by heap: nothing was scanned into it yet
    r = await boss.post("/api/scan_folder", json={"path": str(roots)})
    assert_error(r, 400, "missing_field")
    assert_error(
        await boss.post("/api/abort_scan", json={"scan_id": "nope"}), 404, "scan_not_found"
    )

    # another user: only under <root>/<their id>/
    async with HeaperClient(scan_server.url) as eve:
        from heaper_trio.client import LoginPending

        with pytest.raises(LoginPending):
            await eve.login()
        await scan_server.services.storage.set_user_state(eve.user_id or "", "approved", 1)
        await eve.login()
        theirs = await new_heap(eve)
        mine = roots / (eve.user_id or "")
        write(mine / "a.txt", "a")
        for path in (
            str(roots),
            str(roots / "shared"),
            "..",
            str(mine / ".."),
            str(roots / (boss.user_id or "")),
        ):
            await attempt(path, 403, "scan_path_forbidden", eve, theirs["id"])
        job = await scan(eve, theirs["id"], mine)
        assert job["files_done"] == 1
        assert not [
            s
            for s in (await eve.get("/api/active_scans")).json()["scans"]
            if s["heap_id"] == heap["id"]
        ]
        r = await eve.post("/api/abort_scan", json={"scan_id": job["scan_id"]})
        assert r.status_code == 200  # its own, finished: answers the final state
        assert r.json()["scan"]["state"] == "done"


async def test_scanning_is_off_without_roots(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    r = await admin.post("/api/scan_folder", json={"heap_id": heap["id"], "path": "/tmp"})
    assert_error(r, 403, "scanning_disabled")
    assert (await admin.get("/api/active_scans")).json() == {"success": True, "scans": []}


def make_tree(root: Path, files: int, folders: int, size: int = 1024) -> int:
    """``files`` files of ``size`` distinct bytes in ``folders`` folders; total bytes."""
    for i in range(files):
        folder = root / f"f{i % folders:03d}"
        if i < folders:
            folder.mkdir(parents=True)
        (folder / f"file{i:05d}.bin").write_bytes(i.to_bytes(8, "big") * (size // 8))
    return files * size


FILES, ABORT_AFTER = 4_000, 1_200


@pytest.mark.slow
async def test_thousands_of_files_abort_then_full_rescan(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    # FILES, not more: 10,000 files proved nothing 4,000 do not (abort mid-scan, steady
    # progress, a consistent rescan) and cost this test, which runs alone, a minute per engine
    heap = await new_heap(boss)
    tree = roots / "big"
    total = await trio.to_thread.run_sync(make_tree, tree, FILES, 40)
    events: list[tuple[float, dict[str, Any]]] = []

    async def listen(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with live_client(scan_server.url, "/api/ws") as legacy:
            await legacy.ws.send_message(json.dumps({"token": boss.access_token}))
            await legacy.ws.get_message()
            task_status.started()
            while True:
                events.append((time.monotonic(), json.loads(await legacy.ws.get_message())))

    async with trio.open_nursery() as nursery:
        await nursery.start(listen)
        started = time.monotonic()
        r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(tree)})
        scan_id = r.json()["scan_id"]
        again = await boss.post(
            "/api/scan_folder", json={"heap_id": heap["id"], "path": str(tree / "f001")}
        )
        assert_error(again, 409, "scan_running")
        with trio.fail_after(60):
            while True:
                [job] = (await boss.get("/api/active_scans")).json()["scans"]
                if job["files_done"] >= ABORT_AFTER:
                    break
                await trio.sleep(0.02)
        asked = time.monotonic()
        r = await boss.post("/api/abort_scan", json={"scan_id": scan_id})
        assert r.status_code == 200 and r.json()["scan"]["state"] in ("aborting", "aborted")
        job = await finished(boss, scan_id)
        stopped = time.monotonic() - asked
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert job["state"] == "aborted" and stopped < 1.0, (job, stopped)
    assert ABORT_AFTER <= job["files_done"] < FILES
    # everything read before the abort is committed, whole: rows and blocks agree
    counted = await check_consistent(scan_server, heap["id"], tree)
    assert counted["files"] == job["files_done"], (counted, job)
    progress = [t for t, e in events if e["type"] == "scan.progress"]
    assert [e["type"] for _, e in events if e["type"] != "scan.progress"] == ["scan.aborted"]
    gaps = [b - a for a, b in zip([started, *progress], progress)]
    # progress keeps coming at a steady pace (a stalled loop would leave a gap of seconds);
    # 1 s, not tighter: a busy two-core CI machine has stretched a gap to 0.6 s
    assert max(gaps) < 1.0 and len(progress) <= (asked - started) * 3 + 3, gaps

    t0 = time.monotonic()
    full = await scan(boss, heap["id"], tree, timeout=120)
    first = time.monotonic() - t0
    assert (full["state"], full["files_seen"], full["files_done"]) == ("done", FILES, FILES)
    assert full["files_unchanged"] == job["files_done"]
    assert full["files_new"] == FILES - job["files_done"] and full["bytes"] == total
    assert full["files_missing"] == 0 and full["errors"] == 0
    assert await check_consistent(scan_server, heap["id"], tree) == {
        "files": FILES,
        "folders": 40,
    }
    t0 = time.monotonic()
    same = await scan(boss, heap["id"], tree)
    rescan = time.monotonic() - t0
    assert (same["files_unchanged"], same["bytes_hashed"]) == (FILES, 0)
    print(
        f"\n{scan_server.services.storage.engine}: rest of first scan "
        f"{full['files_new']} files in {first:.2f}s; no-change rescan of {FILES} in "
        f"{rescan:.2f}s ({FILES / rescan:.0f} files/s); abort took {stopped * 1000:.0f} ms"
    )


async def test_bulk_created_blocks_are_those_commit_changes_makes(
    make_settings: Callable[..., Settings],
) -> None:
    """The scan's one-statement-per-table creation writes exactly the rows (projection,
    relations, files, log, search, change times) that the per-block path writes."""
    from heaper_trio.services.documents import DocumentService
    from heaper_trio.services.scans.commit import NewBlock, block_projection

    from .test_storage import login, opened

    settings = make_settings()
    async with opened(settings) as storage:
        user = (await login(storage, "pk-bulk", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)

        built: dict[int, NewBlock] = {}

        def change(block_id: str, n: int) -> BlockChange:
            h = f"{n:064x}"
            new = built.setdefault(
                n,
                NewBlock.build(
                    block_type="file",
                    title=f"holiday photo {n}.jpg",
                    tags=["folder-a", "folder-b"],
                    files={f"{h}:7": {"hash": h, "file_size": 7, "width": 2}},
                ),
            )
            return BlockChange(
                block_id,
                heap.id,
                user.id,
                None,
                (new.update,),
                block_projection(new.projection),
                new.state_vector,
                len(new.update),
            )

        [plain] = await storage.commit_changes([change("plain", 1)], NOW)
        results, _ = await storage.commit_scan_batch(
            ScanBatch(
                heap.id, "s", changes=(change("bulk1", 1), change("bulk2", 2), change("plain", 3))
            ),
            NOW,
        )
        assert [r.status.value for r in results] == ["created", "created", "conflict"]
        assert results[0].updated_at == plain.updated_at + 1
        assert results[1].updated_at == plain.updated_at + 2
        records = await storage.get_blocks(["plain", "bulk1"])
        a, b = (dataclasses.asdict(records[k]) for k in ("plain", "bulk1"))
        for key in ("id", "created_at", "updated_at"):
            a.pop(key), b.pop(key)
        assert a == b
        assert await storage.related("plain") == await storage.related("bulk1")
        assert (await storage.load_block("plain")).updates == (
            await storage.load_block("bulk1")
        ).updates  # type: ignore[union-attr]
        assert await storage.file_hashes_of_heap(heap.id, ["bulk1"]) == [f"{1:064x}"]
        [h1], [h2] = [(await storage.block_history(k))[1] for k in ("plain", "bulk1")]
        assert (h1.seq, h1.author_id, h1.size) == (h2.seq, h2.author_id, h2.size)
        found = await storage.query_blocks(heap.id, BlockQuery(terms=("holiday",)), 10)
        assert {r.id for r in found} == {"plain", "bulk1", "bulk2"}
        tagged = await storage.query_blocks(heap.id, BlockQuery(tag="folder-b"), 10)
        assert {r.id for r in tagged} == {"plain", "bulk1", "bulk2"}
        page = await storage.changes_since(heap.id, plain.updated_at - 1, 10)
        assert [c.id for c in page.changed] == ["plain", "bulk1", "bulk2"]


@pytest.mark.slow  # scheduled first: left for the end it would run alone
async def test_shutdown_cancels_a_scan_cleanly(
    make_settings: Callable[..., Settings], roots: Path
) -> None:
    tree = roots / "many"
    await trio.to_thread.run_sync(make_tree, tree, 1500, 15)
    settings = make_settings(scan_roots=str(roots))
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        running: RunningServer = await nursery.start(
            partial(run_server, settings, shutdown=shutdown)
        )
        async with HeaperClient(running.url) as c:
            await c.login()
            key = c.key
            heap = await new_heap(c)
            r = await c.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(tree)})
            scan_id = r.json()["scan_id"]
            job = running.services.scans.jobs[scan_id]  # forgotten here once its row is final
            with trio.fail_after(30):
                while job.files_done == 0:
                    await trio.sleep(0.01)
        shutdown.set()
    assert job.state == "aborted" and job.finished_at is not None
    assert scan_id not in running.services.scans.jobs
    assert 0 < job.files_done < 1500
    async with trio.open_nursery() as nursery:  # the same data, another server life
        shutdown = trio.Event()
        again: RunningServer = await nursery.start(partial(run_server, settings, shutdown=shutdown))
        counted = await check_consistent(again, heap["id"], tree)
        assert counted["files"] >= job.files_done  # committed before the cancel: kept whole
        async with HeaperClient(again.url, key) as c:
            await c.login()
            [row] = (await c.get("/api/scans")).json()["scans"]  # written at the shutdown
            assert (row["scan_id"], row["state"]) == (scan_id, "aborted")
            assert row["files_done"] == job.files_done
            done = await scan(c, heap["id"], tree)
        assert (done["state"], done["files_done"]) == ("done", 1500)
        assert (await check_consistent(again, heap["id"], tree))["files"] == 1500
        shutdown.set()


async def test_regenerate_and_reindex(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(boss)
    tree = roots / "pics"
    image = write(tree / "wide.png", png((64, 32)))
    await scan(boss, heap["id"], tree)
    h = sha(image.read_bytes())
    services = scan_server.services
    entry = await services.storage.scan_entries(heap["id"], [str(image)])
    block_id = entry[str(image)].block_id
    key = f"{h}:{image.stat().st_size}"
    # what probing found is lost (an older server, a broken probe)
    await services.storage.update_file(h, meta={}, mime_type="application/octet-stream")
    await services.documents.server_edit(
        boss.user_id or "",
        heap["id"],
        block_id,
        lambda doc: doc.patch_file_entry(
            key,
            {
                "width": None,
                "height": None,
                "mime_type": "application/octet-stream",
                "note": "kept",
            },
        ),
    )
    thumb = await boss.get(f"/api/file/{h}/thumbnail/small/wide.png")
    assert thumb.status_code == 200
    cached = services.media.path_for(h, "image", "small")
    assert cached.exists()

    r = await boss.post("/api/regenerate_file", json={"file_hash": h})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["mime_type"], answer["width"], answer["height"]) == ("image/png", 64, 32)
    assert answer["blocks_changed"] == 1 and not cached.exists()
    fixed = (await files_v0(boss, block_id))[key]
    assert (fixed["width"], fixed["mime_type"], fixed["note"]) == (64, "image/png", "kept")
    record = await services.storage.get_file(h)
    assert record is not None and record.meta["width"] == 64
    assert_error(
        await boss.post("/api/regenerate_file", json={"file_hash": "0" * 64}), 404, "file_not_found"
    )
    assert_error(await boss.post("/api/regenerate_file", json={}), 400, "missing_field")

    await services.documents.server_edit(
        boss.user_id or "",
        heap["id"],
        block_id,
        lambda doc: doc.patch_file_entry(key, {"width": 1}),
    )
    r = await boss.post("/api/reindex_files", json={"heap_id": heap["id"]})
    assert r.status_code == 200 and r.json()["scan"]["kind"] == "reindex"
    job = await finished(boss, r.json()["scan_id"])
    assert (job["state"], job["files_seen"], job["files_done"], job["files_changed"]) == (
        "done",
        1,
        1,
        1,
    )
    assert (await files_v0(boss, block_id))[key]["width"] == 64
    job = await finished(boss, (await boss.post("/api/reindex_files", json={})).json()["scan_id"])
    assert (job["files_done"], job["files_unchanged"]) == (1, 1)


@pytest.mark.slow  # scheduled first: left for the end it would run alone
async def test_changed_content_is_never_served_under_its_old_hash(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(boss)
    tree = roots / "mixed"
    a, b, c = (
        write(tree / n, t) for n, t in (("a.txt", "same"), ("b.txt", "same"), ("c.txt", "solo"))
    )
    await scan(boss, heap["id"], tree)
    r = await boss.post(
        f"/api/upload/file/{heap['id']}/uploaded",  # a stored copy of its own
        files={"file": ("c.txt", b"solo", "text/plain")},
    )
    assert r.status_code == 200, r.text
    storage = scan_server.services.storage
    first = await storage.get_file(sha(b"same"))
    assert first is not None and first.source_path in (str(a), str(b))
    served, other = (a, b) if first.source_path == str(a) else (b, a)
    write(served, "changed")
    write(c, "changed c")
    done = await scan(boss, heap["id"], tree)
    assert done["files_changed"] == 2
    moved = await storage.get_file(sha(b"same"))  # the other copy serves it now
    assert moved is not None and moved.source_path == str(other)
    r = await boss.get(f"/api/file/{sha(b'same')}/raw/x.txt")
    assert r.status_code == 200 and r.content == b"same"
    kept = await storage.get_file(sha(b"solo"))  # held by the upload, served from the store
    assert kept is not None and kept.source_path is None
    r = await boss.get(f"/api/file/{sha(b'solo')}/raw/c.txt")
    assert r.status_code == 200 and r.content == b"solo"
    r = await boss.get(f"/api/file/{sha(b'changed c')}/raw/c.txt")
    assert r.status_code == 200 and r.content == b"changed c"
