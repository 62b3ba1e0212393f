"""``python -m heaper_trio import SRC --heap ID``: a folder of Markdown notes (an export of
this server, or an Obsidian-style vault) or an exported zip, into a heap, as new blocks.

Every note becomes a block with a new id (ids are unique per server, and the source may come
from this very server); links between notes are rewritten to the new ids. The heap's root
note of an export (``type: index``) goes into the heap's own root block (its content; the
heap keeps its name). Tags: an export's ``tag_notes`` name the tag blocks exactly; otherwise
front matter ``tags`` and inline ``#tags`` name tags by title, matched against the heap's tag
blocks and the imported notes, and created when missing (``a/b`` is tag ``a/b`` tagged with
``a``). Files are uploaded through the upload routes, like the app's, after their block.
"""

from __future__ import annotations

import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pycrdt import Doc, Map, XmlFragment

from heaper_trio.client.documents import CONTENT, META, TITLE, add_tag, append_paragraph
from heaper_trio.client.errors import HeaperError
from heaper_trio.client.session import HeaperClient
from heaper_trio.client.transfer import frontmatter
from heaper_trio.client.transfer.batches import BATCH, push_new
from heaper_trio.client.transfer.export import TransferError
from heaper_trio.client.transfer.from_markdown import Links, Parsed, Target, parse
from heaper_trio.client.transfer.names import inside
from heaper_trio.client.transfer.progress import Bar
from heaper_trio.client.transfer.to_markdown import BLOCK_SCHEME
from heaper_trio.client.transfer.tree import Child, write_children
from heaper_trio.client.transfer.vault import (
    MAX_NOTE_BYTES,
    ZIP_LIMITS,
    Vault,
    VaultError,
    ZipLimits,
    open_inside,
    scan,
    unzip,
)


@dataclass
class _Note:
    path: str
    fields: dict[str, Any] | None
    body: str
    block_id: str
    title: str
    parsed: Parsed | None = None


@dataclass
class ImportReport:
    heap_id: str
    blocks: dict[str, str] = field(default_factory=dict)  # note path -> new block id
    ids: dict[str, str] = field(default_factory=dict)  # exported block id -> new block id
    tags_created: list[str] = field(default_factory=list)
    files: int = 0
    skipped: list[str] = field(default_factory=list)


class _VaultLinks(Links):
    """Links of one note, resolved against the vault: nothing outside it is ever named."""

    def __init__(self, importer: _Importer, note: _Note) -> None:
        self.importer, self.note = importer, note
        self.obsidian = not _exported(note.fields)

    def link(self, href: str) -> Target | None:
        if href.startswith(BLOCK_SCHEME):
            old = href[len(BLOCK_SCHEME) :]
            return Target("block", self.importer.ids.get(old, old)) if old else None
        path = urllib.parse.unquote(href.split("#", 1)[0])
        if not path:
            return None
        base = self.importer.root / PurePosixPath(self.note.path).parent
        found = inside(self.importer.root, path, base)
        if found is None:
            return None
        rel = found.relative_to(self.importer.root).as_posix()
        if rel in self.importer.notes:
            return Target("block", self.importer.notes[rel].block_id)
        return Target("file", rel) if rel in self.importer.file_set else None

    def wiki(self, name: str) -> Target | None:
        key = name.strip().lower()
        note = self.importer.stems.get(key) or self.importer.stems.get(key.removesuffix(".md"))
        if note is not None:
            return Target("block", self.importer.notes[note].block_id)
        path = self.importer.by_file_name.get(key)
        return Target("file", path) if path else None


class _Importer:
    def __init__(self, client: HeaperClient, heap_id: str, vault: Vault, bar: Bar) -> None:
        self.client, self.heap_id, self.vault, self.bar = client, heap_id, vault, bar
        self.root = vault.root
        self.notes: dict[str, _Note] = {}
        self.ids: dict[str, str] = {}
        self.file_set = set(vault.files)
        self.stems = vault.by_stem()
        self.by_file_name = vault.files_by_name()
        self.tags: dict[str, str] = {}  # tag title -> block id (the heap's and the imported)
        self.report = ImportReport(heap_id, skipped=list(vault.skipped))

    async def run(self) -> ImportReport:
        heaps = {h.id: h for h in await self.client.heaps.list()}
        heap = heaps.get(self.heap_id)
        if heap is None:
            raise TransferError(f"import: no heap {self.heap_id} of yours on this server")
        self._read_notes(heap.root_block_id)
        await self._known_tags()
        for note in self.notes.values():
            note.parsed = parse(note.body, _VaultLinks(self, note))
        files = [
            (n, rel, name)
            for n in self.notes.values()
            if n.parsed
            for rel, name in n.parsed.files.items()
        ]
        total = len(self.notes) + len(files)
        new: list[tuple[str, Doc, str]] = [
            (block_id, _doc("tag", title, None), title) for title, block_id in self._missing_tags()
        ]
        for note in sorted(self.notes.values(), key=lambda n: n.path):
            if note.block_id == heap.root_block_id:
                await self._push_root(note)
            else:
                new.append((note.block_id, self._note_doc(note), note.path))
            self.report.blocks[note.path] = note.block_id
        for i in range(0, len(new), BATCH):
            chunk = new[i : i + BATCH]
            self.bar.show(i, total, chunk[0][2])
            docs = [(block_id, doc) for block_id, doc, _ in chunk]
            answers = await push_new(self.client, self.heap_id, docs)
            for block_id, _, what in chunk:
                status = answers.get(block_id, {}).get("status")
                if status not in ("created", "ok"):
                    raise TransferError(f"import: {what}: the server answered {status}")
        for i, (note, rel, name) in enumerate(files):
            self.bar.show(len(self.notes) + i, total, rel)
            try:
                with open_inside(self.root, rel) as f:  # as a note is read: no link followed
                    await self.client.uploads.upload(self.heap_id, note.block_id, f, name=name)
            except (VaultError, OSError) as e:  # a link put in its place since the scan
                self.report.skipped.append(rel)
                self.bar.warn(f"{rel} not uploaded: {e}")
                continue
            except HeaperError as e:  # too large, a full disk: the rest still goes in
                self.report.skipped.append(f"{rel}: {e.code}")
                self.bar.warn(f"{rel} not uploaded: {e.message} ({e.code})")
                continue
            self.report.files += 1
        self.bar.done(f"{len(self.notes)} notes, {self.report.files} files into {self.heap_id}")
        return self.report

    def _read_notes(self, root_block: str) -> None:
        root_taken = False
        for path in self.vault.notes:
            try:
                text = _read_note(self.root, path)
            except (OSError, UnicodeDecodeError, VaultError):
                self.report.skipped.append(path)
                continue
            fields, body = frontmatter.split(text)
            f = fields or {}
            is_root = f.get("type") == "index" and _exported(f) and not root_taken
            root_taken |= is_root
            block_id = root_block if is_root else str(uuid.uuid4())
            title = f.get("title")
            if not isinstance(title, str):
                title = PurePosixPath(path).name[:-3]
            self.notes[path] = _Note(path, fields, body, block_id, title)
            if isinstance(f.get("id"), str):
                self.ids[f["id"]] = block_id
            for alias in frontmatter.strings(f.get("aliases")):  # Obsidian: [[alias]] works too
                self.stems.setdefault(alias.lower(), path)
        self.report.ids = dict(self.ids)

    async def _known_tags(self) -> None:
        """The heap's tag blocks by title, then the imported tag notes (they win)."""
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {"heap_id": self.heap_id, "type": "tag", "limit": 500}
            if cursor:
                body["cursor"] = cursor
            answer = await self.client.call("POST", "/api/heap", json=body)
            for b in answer.get("blocks", []):
                self.tags.setdefault(
                    str(b.get("title") or ""), str(b.get("id") or b.get("block_id"))
                )
            cursor = answer.get("next_cursor")
            if not answer.get("has_more") or not cursor:
                break
        for note in self.notes.values():
            if (note.fields or {}).get("type") == "tag":
                self.tags[note.title] = note.block_id

    def _tag_names(self, note: _Note) -> list[str]:
        f = note.fields or {}
        if _exported(f):
            return []  # an export names its tags exactly (tag_notes)
        names = [t.lstrip("#") for t in frontmatter.strings(f.get("tags"))]
        names += note.parsed.tags if note.parsed else []
        return [n for n in dict.fromkeys(names) if n]

    def _missing_tags(self) -> list[tuple[str, str]]:
        """Tags named by title that no block has yet, parents first (``a`` before ``a/b``)."""
        wanted: set[str] = set()
        for note in self.notes.values():
            for name in self._tag_names(note):
                parts = name.split("/")
                wanted |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        created = []
        for name in sorted(wanted, key=lambda n: (n.count("/"), n)):
            if name not in self.tags:
                self.tags[name] = str(uuid.uuid4())
                created.append((name, self.tags[name]))
                self.report.tags_created.append(name)
        return created

    def _tag_ids(self, note: _Note) -> list[str]:
        f = note.fields or {}
        if "tag_notes" in f:
            out = []
            for ref in frontmatter.strings(f["tag_notes"]):
                if ref.startswith(BLOCK_SCHEME):
                    old = ref[len(BLOCK_SCHEME) :]
                    out.append(self.ids.get(old, old))
                elif (hit := self.notes.get(ref)) is not None:
                    out.append(hit.block_id)
            return out
        return [self.tags[n] for n in self._tag_names(note) if n in self.tags]

    async def _push_root(self, note: _Note) -> None:
        """An export's root note: its content and tags into the heap's own root block."""
        block = await self.client.blocks.fetch(self.heap_id, note.block_id)
        with block.doc.transaction():
            write_children(block.doc.get(CONTENT, type=XmlFragment), self._nodes(note))
            for tag_id in self._tag_ids(note):
                add_tag(block.doc, tag_id)
        result = await self.client.blocks.push(block)
        if not result.ok:
            raise TransferError(f"import: {note.path}: the server answered {result.status}")

    def _nodes(self, note: _Note) -> list[Child]:
        return note.parsed.nodes if note.parsed else []

    def _note_doc(self, note: _Note) -> Doc:
        f = note.fields or {}
        # a vault's own `type` field means something else
        block_type = f["type"] if _exported(f) else "document"
        if block_type == "index":
            block_type = "document"  # a heap has one root
        created = frontmatter.ms(f.get("created"))
        if created is None:
            created = int((self.root / note.path).stat().st_mtime * 1000)
        doc = _doc(str(block_type), note.title, created)
        with doc.transaction():
            write_children(doc.get(CONTENT, type=XmlFragment), self._nodes(note))
            for tag_id in self._tag_ids(note):
                add_tag(doc, tag_id)
        return doc


def _read_note(root: Path, rel: str) -> str:
    """A note's text, refusing a symbolic link put in its place (or on its way) since the scan."""
    with open_inside(root, rel) as f:
        return f.read(MAX_NOTE_BYTES + 1)[:MAX_NOTE_BYTES].decode("utf-8-sig")


def _exported(fields: dict[str, Any] | None) -> bool:
    """A note written by an export (its front matter has ``id``, ``type`` and ``title``), read
    as exactly as it was written; any other is read as a vault's note (Obsidian syntax)."""
    return fields is not None and all(
        isinstance(fields.get(k), str) for k in ("id", "type", "title")
    )


def _doc(block_type: str, title: str, created: int | None) -> Doc:
    doc: Doc = Doc()
    with doc.transaction():
        meta = doc.get(META, type=Map)
        meta["type"] = block_type
        meta["created_at"] = created if created is not None else int(time.time() * 1000)
        append_paragraph(doc, *([title] if title else []), root=TITLE)
    return doc


async def import_source(
    client: HeaperClient,
    src: Path,
    heap_id: str,
    *,
    bar: Bar | None = None,
    zip_limits: ZipLimits = ZIP_LIMITS,
) -> ImportReport:
    """Import a folder, or a zip unpacked whole (within ``zip_limits``) before anything is
    sent, so a zip that cannot be unpacked imports nothing."""
    bar = bar or Bar("import", quiet=True)
    try:
        if _is_zip(src):
            with tempfile.TemporaryDirectory(prefix="heaper-import-") as tmp:
                vault = scan(unzip(src, Path(tmp), zip_limits))
                return await _Importer(client, heap_id, vault, bar).run()
        return await _Importer(client, heap_id, scan(src), bar).run()
    except VaultError as e:
        raise TransferError(str(e)) from None


def _is_zip(src: Path) -> bool:
    return src.suffix.lower() == ".zip" and src.is_file() and not src.is_symlink()
