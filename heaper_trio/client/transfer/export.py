"""``python -m heaper_trio export --heap ID DEST``: a heap as Markdown files, one per block
that is not in the trash, with its files beside them (``files/``), into a new folder or a zip.

Consistency while the server runs: every block is read as one committed state (a pull), and
the heap's change clock (delta) is read before and after; blocks that changed meanwhile are
read again until a pass sees no change, so the export is the heap as of one point of its
clock, not a mix of before and after an edit that touches several blocks.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, XmlFragment

from heaper_trio.client.documents import CONTENT, FILES, META, RELATIONS, TITLE
from heaper_trio.client.errors import HeaperError
from heaper_trio.client.session import HeaperClient
from heaper_trio.client.transfer import frontmatter
from heaper_trio.client.transfer.batches import BATCH, pull_full
from heaper_trio.client.transfer.from_markdown import FILES_MARKER
from heaper_trio.client.transfer.names import NoteNames, attachment_path
from heaper_trio.client.transfer.progress import Bar
from heaper_trio.client.transfer.to_markdown import BLOCK_SCHEME, blocks, escape
from heaper_trio.client.transfer.tree import plain_text, read_fragment

MAX_PASSES = 5
HASH = re.compile(r"[0-9a-f]{64}")
FILE_CHUNK = 1 << 16


class TransferError(Exception):
    """One line for the operator (the CLI prints it and exits 2)."""


@dataclass
class _Block:
    block_id: str
    updated_at: int
    doc: Doc
    title: str = ""
    name: str = ""


@dataclass
class ExportReport:
    dest: str
    notes: dict[str, str] = field(default_factory=dict)  # block id -> note path
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # files the server would not serve


async def export_heap(
    client: HeaperClient, heap_id: str, dest: Path, *, bar: Bar | None = None
) -> ExportReport:
    bar = bar or Bar("export", quiet=True)
    _check_dest(dest)
    read = await _read_heap(client, heap_id, bar)
    stage = _stage(dest)
    try:
        report = await _write(client, read, stage, bar)
        _finish(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report.dest = str(dest)
    bar.done(f"{len(report.notes)} notes, {report.files} files -> {dest}")
    return report


def _check_dest(dest: Path) -> None:
    as_zip = dest.suffix.lower() == ".zip"
    if dest.exists() and not (dest.is_dir() and not as_zip and not any(dest.iterdir())):
        raise TransferError(f"export: {dest} already exists (give a new path or an empty folder)")


def _stage(dest: Path) -> Path:
    """The hidden folder the export is written into, renamed to DEST (or zipped) once
    complete: an export that fails or is killed never looks like a finished one."""
    for old in dest.parent.glob(f".{glob.escape(dest.name)}.partial-*"):
        pid = old.name.rsplit("-", 1)[-1].removesuffix(".zip")
        if pid.isdigit() and not _alive(int(pid)):  # left by a killed export
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    stage = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        raise TransferError(f"export: cannot write {dest}: {e.strerror or e}") from None
    return stage


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(stage: Path, dest: Path) -> None:
    if dest.suffix.lower() == ".zip":
        _zip(stage, dest)
        shutil.rmtree(stage)
        return
    if dest.is_dir():
        dest.rmdir()
    os.rename(stage, dest)


async def _read_heap(client: HeaperClient, heap_id: str, bar: Bar) -> dict[str, _Block]:
    """Every live block of the heap as of one change time of it (see the module docstring).
    A heap that keeps changing for ``MAX_PASSES`` passes is exported as last read."""
    since = 0
    found: dict[str, _Block] = {}
    for n in range(MAX_PASSES):
        changed: dict[str, dict[str, Any]] = {}
        gone: set[str] = set()
        async for page in client.blocks.changes(heap_id, since):
            for row in page.changed_blocks:
                changed[str(row["block_id"])] = row
            gone |= {str(row["block_id"]) for row in page.deleted_blocks}
            since = page.server_time
        if n > 0 and not changed and not gone:
            break
        for block_id in gone | set(changed):
            found.pop(block_id, None)
        wanted = sorted(i for i, row in changed.items() if not row.get("deleted_at"))
        wanted = [i for i in wanted if i not in gone]
        docs: dict[str, Doc | None] = {}
        for i in range(0, len(wanted), BATCH):
            bar.show(i, len(wanted), "reading blocks")
            docs |= await pull_full(client, wanted[i : i + BATCH])
        for block_id, doc in docs.items():
            if doc is None:  # purged meanwhile
                continue
            meta = doc.get(META, type=Map).to_py() or {}
            if meta.get("deleted_at") or meta.get("permanently_deleted_at"):
                continue
            updated = int(changed[block_id].get("updated_at") or 0)
            found[block_id] = _Block(block_id, updated, doc)
    return found


async def _write(
    client: HeaperClient, found: dict[str, _Block], stage: Path, bar: Bar
) -> ExportReport:
    names = NoteNames()
    # names in a fixed order (type, title, id) so that clashes resolve the same way each time
    for b in found.values():
        b.title = plain_text(read_fragment(b.doc.get(TITLE, type=XmlFragment)))

    def order(b: _Block) -> tuple[str, str]:
        return (b.title, b.block_id)

    for b in sorted(found.values(), key=order):
        b.name = names.name(b.title, b.block_id)

    def target(block_id: str) -> tuple[str, str] | None:
        b = found.get(block_id)
        return (b.name, b.title) if b else None

    report = ExportReport(str(stage))
    written: dict[str, str] = {}  # attachment path -> hash
    missing: set[str] = set()
    for i, b in enumerate(sorted(found.values(), key=order)):
        bar.show(i, len(found), b.name)
        doc = b.doc
        meta = doc.get(META, type=Map).to_py() or {}
        relations = doc.get(RELATIONS, type=Map).to_py() or {}
        tags, tag_notes = _tags(relations, found)
        body = blocks(read_fragment(doc.get(CONTENT, type=XmlFragment)), target)
        attachments: list[str] = []
        files = doc.get(FILES, type=Map).to_py() or {}
        for key in sorted(files):
            entry = files[key]
            file_hash = entry.get("hash") if isinstance(entry, dict) else None
            if not isinstance(file_hash, str) or not HASH.fullmatch(file_hash):
                continue  # a claim no store holds (a document is whatever its owner wrote)
            name = str(entry.get("name") or "file")
            path = attachment_path(file_hash, name)
            if path in missing:
                continue
            if path not in written:
                size = await _download(client, file_hash, stage / path)
                if size is None:
                    missing.add(path)
                    report.skipped.append(f"{b.name}: {name}")
                    bar.warn(f"{b.name}: file {name} ({file_hash[:8]}) cannot be read; left out")
                    continue
                report.bytes += size
                written[path] = file_hash
                report.files += 1
            image = str(entry.get("mime_type") or "").startswith("image/")
            attachments.append(f"{'!' if image else ''}[{escape(name)}]({path})")
        if attachments:
            body = (
                (body + "\n\n" if body else "") + FILES_MARKER + "\n\n" + "\n\n".join(attachments)
            )
        head = frontmatter.write(
            {
                "id": b.block_id,
                "type": meta.get("type") if isinstance(meta.get("type"), str) else None,
                "title": b.title,
                "tags": tags,
                "tag_notes": tag_notes,
                "created": frontmatter.iso(meta.get("created_at")),
                "updated": frontmatter.iso(b.updated_at),
            }
        )
        (stage / b.name).write_text(head + (body + "\n" if body else ""), encoding="utf-8")
        report.notes[b.block_id] = b.name
    return report


def _tags(relations: dict[str, Any], found: dict[str, _Block]) -> tuple[list[str], list[str]]:
    """Tag titles and tag notes, ordered by title then note name (ids would order them
    differently after a round trip); tags outside the export last, as ``heaper:<id>``."""
    ordered: list[tuple[int, str, str]] = []
    for tag_id, value in relations.items():
        if not isinstance(value, dict) or value.get("type") != "tag":
            continue
        b = found.get(tag_id)
        ordered.append((0, b.title, b.name) if b else (1, "", BLOCK_SCHEME + tag_id))
    ordered.sort()
    return [title for outside, title, _ in ordered if not outside], [n for *_, n in ordered]


async def _download(client: HeaperClient, file_hash: str, to: Path) -> int | None:
    """A file's bytes, checked against its hash (the store's promise, checked anyway); None
    when the server does not serve it (never uploaded, gone from the store, a scanned file
    that changed): the export goes on without it."""
    digest, size = hashlib.sha256(), 0
    path = f"/api/file/{file_hash}/raw/file"
    async with client.http.stream("GET", path, headers=client.auth_headers()) as r:
        if r.status_code in (403, 404, 409, 410):
            await r.aread()
            return None
        if r.status_code >= 400:
            await r.aread()
            raise TransferError(f"export: file {file_hash}: {HeaperError(r).message}")
        to.parent.mkdir(parents=True, exist_ok=True)
        with to.open("wb") as f:
            async for chunk in r.aiter_bytes(FILE_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
    if digest.hexdigest() != file_hash:
        raise TransferError(f"export: file {file_hash} arrived with other bytes")
    return size


def _zip(stage: Path, dest: Path) -> None:
    """Sorted entries with a fixed time, so the same heap gives the same zip."""
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}.zip")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(stage.rglob("*")):
            if p.is_file():
                info = zipfile.ZipInfo(p.relative_to(stage).as_posix(), (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, p.read_bytes())
    os.rename(partial, dest)
