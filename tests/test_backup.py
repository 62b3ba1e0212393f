"""``python -m heaper_trio backup`` / ``restore``, on both engines: a backup taken while pushes
and uploads run restores into a new data directory (and a new PostgreSQL database) holding
every update and file acknowledged before it began; a damaged backup is refused with one
line; a backup killed half way leaves nothing that looks complete."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LocalBlock
from heaper_trio.client import documents as d
from heaper_trio.ops.common import MANIFEST, PG_DUMP, STORE
from heaper_trio.storage.snapshot import DB_FILE
from tests.conftest import ROOT, DatabaseSupply, StartServer
from tests.live_client import UNCLOSED_SOCKETS, collect_closed_sockets  # noqa: F401 (autouse)

# The uploads running beside a backup are cut off mid-stream; their streams and sockets are
# left to the garbage collector.
pytestmark = [*UNCLOSED_SOCKETS]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "heaper_trio", *args]


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    return await trio.run_process(
        cli(*args), capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT, env=env
    )


def live_flags(server: RunningServer) -> list[str]:
    s = server.services.settings
    return ["--data-dir", s.data_dir, *(["--database-url", s.database_url] * bool(s.database_url))]


@pytest.fixture
def new_database(engine: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database to restore into (PostgreSQL; made with a unique name, dropped
    after), or "" for SQLite."""
    if engine == "sqlite":
        yield ""
        return
    supply: DatabaseSupply | None = request.getfixturevalue("pg_databases")
    if supply is None:
        pytest.skip("no PostgreSQL available")
    url = supply.take()
    try:
        yield url
    finally:
        supply.give_back(url)


def store_files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (data / STORE).glob("??/??/*")}


@pytest.mark.slow  # scheduled first: left for the end it would run alone
async def test_backup_while_writing_restores_everything_acknowledged_before(
    server: RunningServer,
    admin: HeaperClient,
    start_server: StartServer,
    new_database: str,
    tmp_path: Path,
) -> None:
    heap = await admin.heaps.create("Backed up")
    acked_blocks: list[tuple[str, str]] = []
    acked_files: list[tuple[str, str]] = []  # (hash, file_id)

    async def push_forever() -> None:
        for n in range(10_000):
            block_id, text = str(uuid.uuid4()), f"paragraph {n} {uuid.uuid4().hex}"
            block = LocalBlock(heap.id, block_id, d.new_block("document", f"B{n}", created_at=1))
            d.append_paragraph(block.doc, text)
            assert (await admin.blocks.push(block)).ok
            acked_blocks.append((block_id, text))

    async def upload_forever() -> None:
        for n in range(10_000):
            data = os.urandom(20_000 + n)
            result = await admin.uploads.upload(heap.id, str(uuid.uuid4()), data, name="f.bin")
            assert result.file_id
            acked_files.append((hashlib.sha256(data).hexdigest(), result.file_id))

    dest = tmp_path / "backup"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push_forever)
        nursery.start_soon(upload_forever)
        while len(acked_blocks) < 5 or len(acked_files) < 3:
            await trio.sleep(0.02)
        blocks_before, files_before = list(acked_blocks), list(acked_files)
        done = await run_cli("backup", str(dest), *live_flags(server))
        assert len(acked_blocks) > len(blocks_before)  # writes went on meanwhile
        nursery.cancel_scope.cancel()
    assert (done.returncode, done.stderr) == (0, b""), done.stderr  # quiet off a terminal
    assert done.stdout == b""
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["missing"] == {} and manifest["stored_files"] >= len(files_before)

    restored_dir = tmp_path / "restored"
    args = ["restore", str(dest), "--data-dir", str(restored_dir)]
    done = await run_cli(*args, *(["--database-url", new_database] * bool(new_database)))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    for h, content in store_files(restored_dir).items():
        assert hashlib.sha256(content).hexdigest() == h

    restored = await start_server(data_dir=str(restored_dir), database_url=new_database)
    async with HeaperClient(restored.url, admin.key) as again:
        await again.login()
        for block_id, text in blocks_before:
            block = LocalBlock(heap.id, block_id)
            assert (await again.blocks.pull(block)).ok
            assert text in d.read_block(block.doc).text
        for h, file_id in files_before:
            raw = await again.get(f"/api/file/{file_id}/raw/f.bin")
            assert raw.status_code == 200, raw.text
            assert hashlib.sha256(raw.content).hexdigest() == h


@pytest.fixture
async def small_backup(
    server: RunningServer, admin: HeaperClient, tmp_path: Path
) -> tuple[Path, RunningServer]:
    heap = await admin.heaps.create("Small")
    await admin.uploads.upload(heap.id, str(uuid.uuid4()), b"some bytes " * 1000, name="a.bin")
    dest = tmp_path / "small-backup"
    done = await run_cli("backup", str(dest), *live_flags(server))
    assert done.returncode == 0, done.stderr
    return dest, server


async def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """The CLI run in this process (no interpreter start-up): exit status, stderr lines."""
    from heaper_trio.cli import main

    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(args))
    return code, capsys.readouterr().err.strip().splitlines()


async def refused(
    capsys: pytest.CaptureFixture[str], src: Path, target: Path, database_url: str
) -> str:
    args = ["restore", str(src), "--data-dir", str(target)]
    code, lines = await in_process(
        capsys, *args, *(["--database-url", database_url] * bool(database_url))
    )
    assert code == 2 and len(lines) == 1 and lines[0].startswith("heaper_trio: restore"), lines
    assert not target.exists()
    return lines[0]


async def test_a_damaged_backup_is_refused_with_one_line(
    small_backup: tuple[Path, RunningServer],
    new_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest, _ = small_backup
    target = tmp_path / "never"

    flipped = tmp_path / "flipped"
    shutil.copytree(dest, flipped)
    stored = next((flipped / STORE).glob("??/??/*"))
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    line = await refused(capsys, flipped, target, new_database)
    assert "does not match the manifest" in line and stored.name in line

    truncated = tmp_path / "truncated"
    shutil.copytree(dest, truncated)
    db = truncated / (PG_DUMP if new_database else DB_FILE)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    line = await refused(capsys, truncated, target, new_database)
    assert "does not match the manifest" in line and db.name in line

    (truncated / MANIFEST).unlink()
    assert "not a complete backup" in await refused(capsys, truncated, target, new_database)

    # refusals before any work: a data directory in use, a non-empty DEST
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    url = ["--database-url", new_database] * bool(new_database)
    code, lines = await in_process(capsys, "restore", str(dest), "--data-dir", str(used), *url)
    assert code == 2 and lines == [
        f"heaper_trio: restore: data_dir: {used} already exists and is not an empty directory"
    ]
    if new_database:  # the live server's database is not empty: never written over
        live = small_backup[1].services.settings.database_url
        line = await refused(capsys, dest, tmp_path / "never", live)
        assert "the database is not empty" in line
    else:
        line = await refused(capsys, dest, tmp_path / "never", "postgresql://x@127.0.0.1/x")
        assert "leave out --database-url" in line


async def test_backup_refuses_a_non_empty_dest_and_a_wrong_data_dir(
    server: RunningServer, admin: HeaperClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "something").write_text("")
    code, lines = await in_process(capsys, "backup", str(dest), *live_flags(server))
    assert code == 2
    assert lines == [f"heaper_trio: backup: {dest} already exists and is not an empty directory"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines = await in_process(capsys, "backup", str(tmp_path / "b"), "--data-dir", str(empty))
    assert code == 2 and len(lines) == 1 and "no database in" in lines[0]


@pytest.mark.slow  # scheduled first: left for the end it would run alone
@pytest.mark.engines("sqlite")
async def test_killed_backup_leaves_nothing_complete_looking(
    small_backup: tuple[Path, RunningServer],
    tmp_path: Path,
    engine: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, server = small_backup
    data = server.services.settings.data_path
    for _ in range(60):  # unreferenced store files: enough copying to be killed during
        blob = os.urandom(1 << 20)
        h = hashlib.sha256(blob).hexdigest()
        (data / STORE / h[:2] / h[2:4]).mkdir(parents=True, exist_ok=True)
        (data / STORE / h[:2] / h[2:4] / h).write_bytes(blob)
    dest = tmp_path / "killed"
    proc = await trio.lowlevel.open_process(
        cli("backup", str(dest), "--data-dir", str(data)), cwd=ROOT
    )
    partial = tmp_path / f".killed.partial-{proc.pid}"
    with trio.fail_after(20):
        while not (partial / STORE).exists() and proc.poll() is None:
            await trio.sleep(0.005)
    assert proc.poll() is None, "the backup finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert not dest.exists() and not (partial / MANIFEST).exists()
    assert "not a complete backup" in await refused(capsys, partial, tmp_path / "never", "")
    # the next backup to the same place completes and clears the leftover
    done = await run_cli("backup", str(dest), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert (dest / MANIFEST).exists() and not partial.exists()


def test_progress_shows_on_a_terminal_only(tmp_path: Path) -> None:
    from heaper_trio.ops.common import Progress

    class Tty(list[str]):
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.append(s)

        def flush(self) -> None:
            pass

    out = Tty()
    p = Progress("backup", out)  # type: ignore[arg-type]
    p.show("files 1/2", force=True)
    p.done("complete")
    assert "".join(out).rstrip(" \n").endswith("backup: complete")


def test_pg_binaries_are_found_or_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from heaper_trio.ops.common import BackupError, find_pg_binary

    if shutil.which("pg_dump") or glob.glob("/usr/lib/postgresql/*/bin/pg_dump"):
        assert find_pg_binary("pg_dump").endswith("pg_dump")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(BackupError, match="pg_nothing not found"):
        find_pg_binary("pg_nothing")


@pytest.mark.engines("sqlite")
async def test_a_file_deleted_during_the_backup_does_not_break_it(
    small_backup: tuple[Path, RunningServer],
    tmp_path: Path,
    engine: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import heaper_trio.storage.snapshot as snapshot

    data = small_backup[1].services.settings.data_path
    stored = next((data / STORE).glob("??/??/*"))
    content = stored.read_bytes()
    real_copy = snapshot.sqlite_copy

    def copy_then_delete(live: Path, dest: Path) -> None:
        real_copy(live, dest)
        stored.unlink()  # as the store does once no block holds it, just after the snapshot

    monkeypatch.setattr(snapshot, "sqlite_copy", copy_then_delete)
    code, lines = await in_process(capsys, "backup", str(tmp_path / "b1"), "--data-dir", str(data))
    assert (code, lines) == (0, [])  # copied before the snapshot: nothing is missing
    assert (tmp_path / "b1" / stored.relative_to(data)).read_bytes() == content

    # bytes the snapshot references that are gone before the backup could copy them: listed
    # and warned about, and the backup (and its restore) still complete
    monkeypatch.setattr(snapshot, "sqlite_copy", real_copy)
    code, lines = await in_process(capsys, "backup", str(tmp_path / "b2"), "--data-dir", str(data))
    assert code == 0 and len(lines) == 1 and stored.name in lines[0] and "warning" in lines[0]
    assert list(json.loads((tmp_path / "b2" / MANIFEST).read_text())["missing"]) == [stored.name]
    code, lines = await in_process(
        capsys, "restore", str(tmp_path / "b2"), "--data-dir", str(tmp_path / "r2")
    )
    assert code == 0 and len(lines) == 1 and stored.name in lines[0]
    assert (tmp_path / "r2" / DB_FILE).exists()


@pytest.mark.engines("sqlite")
async def test_a_full_disk_is_one_line_and_leaves_nothing(
    small_backup: tuple[Path, RunningServer],
    tmp_path: Path,
    engine: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import heaper_trio.ops.backup as backup_module

    def full(src: Path, dst: Path) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(backup_module, "copy_hashed", full)
    data = small_backup[1].services.settings.data_path
    dest = tmp_path / "nospace"
    code, lines = await in_process(capsys, "backup", str(dest), "--data-dir", str(data))
    assert code == 2 and len(lines) == 1 and lines[0].endswith("No space left on device")
    assert not dest.exists() and not list(tmp_path.glob(".nospace.partial-*"))
