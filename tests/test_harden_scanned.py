"""A scanned file is served only as the very file its scan hashed (issue 9, item 1).

Over real servers on both engines, a user who controls their scan folder swaps what a scanned
path leads to: a link to the server's signing key (or /etc/passwd), a link on a parent folder,
a same-size rewrite with mtime put back, a file renamed over it, a FIFO, an entry from before
identities were kept, a hard link to the server's key or database (made before or after the
scan). Every file route (raw, stream, thumbnail, video_thumbnail, animated) answers
``409 file_changed`` and never the other bytes; a rescan of the file is queued, and
afterwards the new content is served under its new hash (or a link is marked missing). An
unchanged file still serves, ranges, thumbnails and all. The pure parts (opening without
links, the walker and hasher refusing links that appear mid-scan) are tested without a server.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending
from heaper_trio.keys import SERVER_KEY_FILE
from heaper_trio.records import ScanBatch
from heaper_trio.records.scans import FileIdentity
from heaper_trio.services.scans.probe import GONE, NOT_A_FILE, hash_file, hash_files
from heaper_trio.services.scans.source import (
    SERVER_FILES,
    NotTheScannedFile,
    ServerFiles,
    open_dir_nofollow,
    open_nofollow,
    open_scanned,
)
from heaper_trio.services.scans.walk import FileSeen, FolderWalker
from heaper_trio.storage.sqlite.engine import DB_FILE

from .conftest import assert_error
from .media_samples import colour_video
from .test_scans import files_v0, png, scan, sha, write
from .test_sync import new_heap

SAFE = {"content-security-policy": "sandbox", "x-content-type-options": "nosniff"}


def routes(h: str) -> list[str]:
    return [
        f"/api/file/{h}/raw/x.bin",
        f"/api/stream/{h}/x.bin",
        f"/api/file/{h}/thumbnail/small/x",
        f"/api/file/{h}/video_thumbnail/small/1",
        f"/api/file/{h}/animated_thumbnail/small/x",
    ]


@pytest.fixture
async def user(scan_server: RunningServer) -> Any:
    """A user who is not an admin: may scan only under ``<root>/<their id>/``."""
    async with HeaperClient(scan_server.url) as admin, HeaperClient(scan_server.url) as c:
        await admin.login()  # the first account is the admin
        with pytest.raises(LoginPending):
            await c.login()
        await scan_server.services.storage.set_user_state(c.user_id or "", "approved", 1)
        await c.login()
        yield c


def folder_of(roots: Path, client: HeaperClient) -> Path:
    path = roots / (client.user_id or "")
    path.mkdir(exist_ok=True)
    return path


@asynccontextmanager
async def rescans_held(server: RunningServer) -> AsyncIterator[None]:
    """Rescans wait meanwhile (they would soon fix what the test wants to see refused)."""
    limiter = server.services.scans.rescans.limiter
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    try:
        yield
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)


async def refused(server: RunningServer, client: HeaperClient, h: str, *never: bytes) -> None:
    """Every route answers 409 file_changed (GET and HEAD), with none of ``never`` in it; a
    rescan is queued (once)."""
    rescans = server.services.scans.rescans
    async with rescans_held(server):
        queued = len(rescans.queued)
        for url in routes(h):
            r = await client.get(url)
            assert_error(r, 409, "file_changed")
            assert not any(secret in r.content for secret in never), url
            assert (await client.request("HEAD", url)).status_code == 409
        assert len(rescans.queued) == queued + 1


async def rescanned(server: RunningServer, since: int) -> None:
    """Wait for the rescans queued after ``since`` (a ``rescans.done`` count) to end."""
    rescans = server.services.scans.rescans
    with trio.fail_after(30):
        while rescans.done <= since or rescans.queued:
            await trio.sleep(0.02)


async def entry_at(server: RunningServer, heap_id: str, path: Path) -> Any:
    return (await server.services.storage.scan_entries(heap_id, [str(path)]))[str(path)]


# -- over a server -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["server key", "/etc/passwd"])
async def test_a_link_swapped_in_is_never_followed(
    user: HeaperClient, scan_server: RunningServer, roots: Path, target: str
) -> None:
    data = scan_server.services.settings.data_path
    pointed = data / SERVER_KEY_FILE if target == "server key" else Path("/etc/passwd")
    secret = pointed.read_bytes()
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    victim = write(mine / "notes.txt", b"n" * len(secret))  # the same size: a size check passes
    await scan(user, heap["id"], mine)
    h = sha(victim.read_bytes())
    r = await user.get(f"/api/file/{h}/raw/notes.txt")
    assert r.status_code == 200 and r.content == victim.read_bytes()

    victim.unlink()
    victim.symlink_to(pointed)
    rescans = scan_server.services.scans.rescans
    since = rescans.done
    await refused(scan_server, user, h, secret, secret[:32])
    await rescanned(scan_server, since)
    # A link is not something a scan indexes: the entry is missing now, and the hash is served
    # from nowhere (404), the link's target still never.
    assert (await entry_at(scan_server, heap["id"], victim)).missing
    for url in routes(h):
        r = await user.get(url)
        assert_error(r, 404, "file_missing")
        assert secret not in r.content
    job = await scan(user, heap["id"], mine)  # and a folder scan skips the link
    assert (job["files_new"], job["skipped"]) == (0, 1)


async def test_a_link_on_a_parent_folder_is_not_followed(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    album = mine / "album"
    photo = write(album / "a.txt", "album content")
    key = scan_server.services.settings.data_path / SERVER_KEY_FILE
    lookalike = write(mine / "keys" / SERVER_KEY_FILE, b"k" * key.stat().st_size)
    await scan(user, heap["id"], mine)
    h, h_key = sha(b"album content"), sha(lookalike.read_bytes())
    assert (await user.get(f"/api/stream/{h}/a.txt")).content == b"album content"
    before = photo.stat()

    # The very same file (inode, size, times), reached through a link: refused all the same.
    album.rename(mine / "album.real")
    album.symlink_to(mine / "album.real")
    assert FileIdentity.of(photo.stat()) == FileIdentity.of(before)
    # A folder of the lookalike swapped for a link to the data directory.
    (mine / "keys").rename(mine / "keys.old")
    (mine / "keys").symlink_to(scan_server.services.settings.data_path)
    since = scan_server.services.scans.rescans.done
    await refused(scan_server, user, h)
    await refused(scan_server, user, h_key, key.read_bytes())
    await rescanned(scan_server, since)
    for h_gone, path in ((h, photo), (h_key, lookalike)):
        assert (await entry_at(scan_server, heap["id"], path)).missing
        assert_error(await user.get(f"/api/file/{h_gone}/raw/x"), 404, "file_missing")


async def test_a_same_size_rewrite_with_mtime_put_back(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    doc = write(mine / "doc.txt", "version one!")
    await scan(user, heap["id"], mine)
    old, new = sha(b"version one!"), sha(b"version two!")
    assert (await user.get(f"/api/file/{old}/raw/doc.txt")).content == b"version one!"
    before = doc.stat()
    await trio.sleep(0.05)  # past the file system's clock tick
    with open(doc, "r+b") as f:  # in place: same inode, same size
        f.write(b"version two!")
    os.utime(doc, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = doc.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )

    since = scan_server.services.scans.rescans.done
    await refused(scan_server, user, old, b"version two!")
    await rescanned(scan_server, since)
    r = await user.get(f"/api/file/{new}/raw/doc.txt")  # the new content, under its new hash
    assert r.status_code == 200 and r.content == b"version two!"
    # no block holds the old content now: its row went with it
    assert_error(await user.get(f"/api/file/{old}/raw/doc.txt"), 404, "file_not_found")
    entry = await entry_at(scan_server, heap["id"], doc)
    assert (entry.hash, entry.identity) == (new, FileIdentity.of(doc.stat()))
    assert list(await files_v0(user, entry.block_id)) == [f"{new}:12"]
    job = await scan(user, heap["id"], mine)  # the index is current: nothing to hash again
    assert (job["files_unchanged"], job["files_changed"]) == (1, 0)


async def test_a_file_renamed_over_the_scanned_one(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    picture = write(mine / "pic.png", png((64, 32)))
    await scan(user, heap["id"], mine)
    h = sha(picture.read_bytes())
    rescans = scan_server.services.scans.rescans

    # the same bytes under a new inode: refused until rescanned, then served again
    os.replace(write(mine / "incoming", picture.read_bytes()), picture)
    since = rescans.done
    await refused(scan_server, user, h)
    await rescanned(scan_server, since)
    r = await user.get(f"/api/file/{h}/thumbnail/small/pic.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert (await user.get(f"/api/file/{h}/raw/pic.png")).content == picture.read_bytes()

    # other bytes renamed in: the new hash serves them
    other = png((48, 48))
    os.replace(write(mine / "incoming", other), picture)
    since = rescans.done
    await refused(scan_server, user, h, other)
    await rescanned(scan_server, since)
    r = await user.get(f"/api/file/{sha(other)}/raw/pic.png")
    assert r.status_code == 200 and r.content == other
    assert_error(await user.get(f"/api/file/{h}/raw/pic.png"), 404, "file_not_found")


async def test_an_unchanged_scanned_file_serves_as_before(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    data = bytes(range(256)) * 8
    blob = write(mine / "data.bin", data)
    picture = write(mine / "pic.png", png((64, 32)))
    clip = colour_video(mine / "clip.mp4")
    await scan(user, heap["id"], mine)
    h = sha(data)
    r = await user.get(f"/api/file/{h}/raw/data.bin")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-disposition"].startswith("attachment")
    assert all(r.headers[k] == v for k, v in SAFE.items())
    r = await user.get(f"/api/stream/{h}/data.bin", headers={"Range": "bytes=0-1"})
    assert r.status_code == 206 and r.content == data[:2]
    assert r.headers["content-range"] == f"bytes 0-1/{len(data)}"
    r = await user.get(f"/api/stream/{h}/data.bin", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    assert r.headers["content-disposition"].startswith("inline")
    r = await user.get(f"/api/file/{h}/raw/x", headers={"If-None-Match": f'"{h}"'})
    assert r.status_code == 304 and all(r.headers[k] == v for k, v in SAFE.items())
    r = await user.get(f"/api/stream/{h}/x", headers={"Range": f"bytes={len(data)}-"})
    assert_error(r, 416, "range_not_satisfiable")
    assert all(r.headers[k] == v for k, v in SAFE.items())
    head = await user.request("HEAD", f"/api/file/{h}/raw/x")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    # thumbnails read the checked file through its descriptor: Pillow and ffmpeg alike
    for url in (
        f"/api/file/{sha(picture.read_bytes())}/thumbnail/small/pic.png",
        f"/api/file/{sha(clip.read_bytes())}/video_thumbnail/small/1",
        f"/api/file/{sha(clip.read_bytes())}/animated_thumbnail/small/c",
    ):
        r = await user.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
        assert all(r.headers[k] == v for k, v in SAFE.items())
    assert blob.read_bytes() == data
    rescans = scan_server.services.scans.rescans
    assert rescans.done == 0 and not rescans.queued


async def test_a_fifo_swapped_in_does_not_hang(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    pipe = write(mine / "stream.txt", "plain text")
    await scan(user, heap["id"], mine)
    h = sha(b"plain text")
    pipe.unlink()
    os.mkfifo(pipe)
    since = scan_server.services.scans.rescans.done
    with trio.fail_after(10):
        await refused(scan_server, user, h)
        await rescanned(scan_server, since)
    assert (await entry_at(scan_server, heap["id"], pipe)).missing


async def test_entries_from_before_identities_were_kept(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    """Rows written before migration 0006 have no identity: treated as changed (409 and a
    rescan), and a folder scan hashes them again instead of trusting size and mtime."""
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    old = write(mine / "old.txt", "scanned by an older server")
    await scan(user, heap["id"], mine)
    h = sha(old.read_bytes())
    storage = scan_server.services.storage

    async def forget_identity() -> None:
        entry = await entry_at(scan_server, heap["id"], old)
        await storage.commit_scan_batch(
            ScanBatch(
                heap["id"],
                entry.scan_id,
                entries=(replace(entry, dev=None, ino=None, ctime_ns=None),),
            ),
            1,
        )
        assert (await entry_at(scan_server, heap["id"], old)).identity is None

    await forget_identity()
    since = scan_server.services.scans.rescans.done
    await refused(scan_server, user, h)
    await rescanned(scan_server, since)
    assert (await user.get(f"/api/file/{h}/raw/old.txt")).content == old.read_bytes()
    assert (await entry_at(scan_server, heap["id"], old)).identity == FileIdentity.of(old.stat())

    await forget_identity()
    job = await scan(user, heap["id"], mine)
    assert (job["files_changed"], job["files_unchanged"]) == (1, 0)
    assert (await entry_at(scan_server, heap["id"], old)).identity == FileIdentity.of(old.stat())
    assert (await user.get(f"/api/file/{h}/raw/old.txt")).status_code == 200


async def test_regenerate_and_reindex_read_only_the_hashed_file(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    picture = write(mine / "pic.png", png((64, 32)))
    await scan(user, heap["id"], mine)
    h = sha(picture.read_bytes())
    r = await user.post("/api/regenerate_file", json={"file_hash": h})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (64, 32)
    picture.unlink()
    picture.symlink_to(scan_server.services.settings.data_path / SERVER_KEY_FILE)
    since = scan_server.services.scans.rescans.done
    assert_error(
        await user.post("/api/regenerate_file", json={"file_hash": h}), 409, "file_changed"
    )
    await rescanned(scan_server, since)
    record = await scan_server.services.storage.get_file(h)
    assert record is not None and record.mime_type == "image/png"


async def test_a_path_is_queued_for_rescan_once_at_a_time(
    user: HeaperClient, scan_server: RunningServer, roots: Path, nursery: trio.Nursery
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    doc = write(mine / "doc.txt", "one")
    await scan(user, heap["id"], mine)
    rescans = scan_server.services.scans.rescans
    doc.write_text("two")
    since = rescans.done
    assert rescans.queue(nursery, str(doc))
    assert not rescans.queue(nursery, str(doc))  # already queued
    assert not rescans.queue(None, str(mine / "other"))  # no nursery: the server is stopping
    await rescanned(scan_server, since)
    assert rescans.done == since + 1
    assert (await entry_at(scan_server, heap["id"], doc)).hash == sha(b"two")


# -- pure parts ------------------------------------------------------------------------------


def test_open_nofollow_refuses_a_link_anywhere(tmp_path: Path) -> None:
    real = write(tmp_path / "real" / "f.txt", "f")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "file_link").symlink_to(real)
    fd = open_nofollow(str(real))
    os.close(fd)
    for path in (tmp_path / "linked" / "f.txt", tmp_path / "file_link"):
        with pytest.raises(OSError) as e:
            open_nofollow(str(path))
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)  # a link, not followed
    with pytest.raises(OSError):
        open_dir_nofollow(str(tmp_path / "linked"))
    with pytest.raises(OSError):
        open_nofollow("relative/path")
    with pytest.raises(OSError):
        open_nofollow(str(tmp_path / "real" / ".." / "real" / "f.txt"))
    known = FileIdentity.of(real.stat())
    with open_scanned(str(real), [known]) as opened:
        assert os.pread(opened.fd, 10, 0) == b"f" and opened.path.read_bytes() == b"f"
    for path, identities in (
        (real, []),
        (tmp_path / "file_link", [known]),
        (tmp_path / "real", [known]),
    ):
        with pytest.raises(NotTheScannedFile):
            open_scanned(str(path), identities)
    with pytest.raises(FileNotFoundError):
        open_scanned(str(tmp_path / "real" / "nope"), [known])


def test_hashing_records_the_identity_of_what_it_read(tmp_path: Path) -> None:
    a = write(tmp_path / "d" / "a.txt", "a")
    write(tmp_path / "outside" / "b.txt", "secret")
    (tmp_path / "d" / "sub").symlink_to(tmp_path / "outside")
    stop = threading.Event()
    done = hash_file(str(a), stop)
    assert done.error is None and done.identity == FileIdentity.of(a.stat())
    gone, through_link, also_a = hash_files(
        [str(tmp_path / "d" / "gone.txt"), str(tmp_path / "d" / "sub" / "b.txt"), str(a)], stop
    )
    assert (gone.failure, through_link.failure) == (GONE, NOT_A_FILE)
    assert also_a.hash == done.hash and also_a.identity == done.identity
    [linked_folder] = hash_files([str(tmp_path / "d" / "sub" / "b.txt")], stop)
    assert linked_folder.failure == NOT_A_FILE and linked_folder.hash == ""


def test_a_folder_swapped_for_a_link_mid_walk_is_not_entered(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root / "sub" / "mine.txt", "mine")
    write(tmp_path / "outside" / "secret.txt", "secret")
    walker = FolderWalker(str(root))
    seen = walker.next_batch(max_items=1)  # the root, and "sub" put on the stack
    assert [f.path for f in walker._stack] == [str(root / "sub")]
    (root / "sub").rename(tmp_path / "sub.old")
    (root / "sub").symlink_to(tmp_path / "outside")
    while batch := walker.next_batch():
        seen += batch
    assert not [s for s in seen if isinstance(s, FileSeen)]
    assert walker.errors == 1 and walker.error_folders == [str(root / "sub")]


async def test_an_upload_of_scanned_bytes_gets_its_own_stable_copy(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    """Another user uploading the bytes of someone's scanned file proves them and gets a copy
    in the store: the scanned folder changing or going afterwards loses them nothing (the
    upload used to be recorded as the scanned path, served from the other user's folder)."""
    data = b"shared song lyrics\n" * 300
    mine = folder_of(roots, user)
    scanned = write(mine / "lyrics.txt", data)
    heap = await new_heap(user)
    await scan(user, heap["id"], mine)
    h = sha(data)
    async with HeaperClient(scan_server.url) as other:
        with pytest.raises(LoginPending):
            await other.login()
        await scan_server.services.storage.set_user_state(other.user_id or "", "approved", 1)
        await other.login()
        theirs = await new_heap(other)
        r = await other.post(
            f"/api/upload/file/{theirs['id']}/blk-direct",
            files={"file": ("l.txt", data)},
            data={"hash": h},
        )
        assert r.status_code == 200, r.text
        record = await scan_server.services.storage.get_file(h)
        assert record is not None and record.source_path is None  # the store copy serves
        assert scan_server.services.files.store_path(h).read_bytes() == data
        scanned.unlink()
        write(scanned, b"rewritten, other bytes\n")
        for client in (other, user):  # both proved these bytes; both read the stable copy
            r = await client.get(f"/api/file/{h}/raw/l.txt")
            assert r.status_code == 200 and r.content == data, r.text
        r = await other.post(
            f"/api/upload/init/{theirs['id']}/blk-again",
            json={"hash": h, "size": len(data), "chunk_size": 65536},
        )
        assert r.json()["status"] == "exists", r.text


# -- hard links to the server's own files ---------------------------------------------------------
# A hard link is not a link that can be refused on the way: it is the file itself, another name
# for the same inode. Linux's protected_hardlinks keeps other users from making one to the
# server's files; the server does not rely on it (scans/source.py, ServerFiles).


@pytest.mark.parametrize("target", [SERVER_KEY_FILE, DB_FILE])
async def test_a_hard_link_to_a_server_file_is_skipped_and_never_served(
    user: HeaperClient, scan_server: RunningServer, roots: Path, target: str
) -> None:
    server_file = scan_server.services.settings.data_path / target
    if not server_file.exists():
        pytest.skip("no database file in the data directory (PostgreSQL)")
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    write(mine / "s1" / "plain.txt", "plain")
    link = mine / "s1" / "key_hardlink"
    os.link(server_file, link)
    secret = server_file.read_bytes()
    job = await scan(user, heap["id"], mine)
    assert (job["files_new"], job["skipped"]) == (1, 1), job
    assert str(link) not in await scan_server.services.storage.scan_entries(heap["id"], [str(link)])
    r = await user.get(f"/api/file/{sha(secret)}/raw/x")
    assert r.status_code == 404 and secret not in r.content


async def test_a_hard_link_swapped_in_after_the_scan_is_refused(
    user: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    key = scan_server.services.settings.data_path / SERVER_KEY_FILE
    secret = key.read_bytes()
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    victim = write(mine / "notes.txt", b"n" * len(secret))
    await scan(user, heap["id"], mine)
    h = sha(victim.read_bytes())
    victim.unlink()
    os.link(key, victim)
    since = scan_server.services.scans.rescans.done
    await refused(scan_server, user, h, secret, secret[:32])
    await rescanned(scan_server, since)  # the rescan does not index the key instead
    assert (await entry_at(scan_server, heap["id"], victim)).missing
    r = await user.get(f"/api/file/{sha(secret)}/raw/x")
    assert r.status_code == 404 and secret not in r.content
    job = await scan(user, heap["id"], mine)
    assert (job["files_new"], job["skipped"]) == (0, 1), job


async def test_a_hard_link_indexed_before_the_check_is_refused_at_serve_time(
    user: HeaperClient, scan_server: RunningServer, roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index written by a server without the check (the reported hole): serving it checks
    again, so the key's bytes stay unserved (409 file_changed, then missing)."""
    key = scan_server.services.settings.data_path / SERVER_KEY_FILE
    secret = key.read_bytes()
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    link = mine / "s1" / "key_hardlink"
    link.parent.mkdir()
    os.link(key, link)
    with monkeypatch.context() as unchecked:
        unchecked.setattr(SERVER_FILES, "data_dirs", set())
        job = await scan(user, heap["id"], mine)
    assert job["files_new"] == 1, job  # indexed, as the old server did
    h = sha(secret)
    since = scan_server.services.scans.rescans.done
    await refused(scan_server, user, h, secret, secret[:32])
    await rescanned(scan_server, since)
    assert (await entry_at(scan_server, heap["id"], link)).missing
    assert_error(await user.get(f"/api/file/{h}/raw/x"), 404, "file_missing")


def test_server_files_are_recognised_only_through_a_second_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = write(data / "server_key", "seed")
    stored = write(data / "files" / "ab" / "upload", "not a secret")
    outside = write(tmp_path / "mine" / "own", "own")
    files = ServerFiles()
    files.register(data)
    assert not files.includes(key.stat())  # its only name is the data directory's own
    for target in (key, stored, outside):
        os.link(target, tmp_path / "mine" / f"link-{target.name}")
    assert files.includes(key.stat())
    assert files.includes((tmp_path / "mine" / "link-server_key").stat())
    assert not files.includes(stored.stat())  # the store: copies of uploads, not protected
    assert not files.includes(outside.stat())
