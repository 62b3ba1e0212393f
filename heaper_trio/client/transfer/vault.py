"""What an import reads from its source folder: the notes (``*.md``) and the other files,
found without leaving the folder. Symbolic links (to files or folders) are skipped, as are
hidden entries (``.obsidian``, ``.git``, ``.trash``) and anything but regular files, so a
vault cannot make an import read outside it; link targets inside notes are checked again when
they are resolved (:func:`.names.inside`)."""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from heaper_trio.client.transfer.names import FILES_DIR

MAX_NOTE_BYTES = 16 << 20


class VaultError(Exception):
    pass


@dataclass
class Vault:
    root: Path
    notes: list[str] = field(default_factory=list)  # POSIX paths relative to root, sorted
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # links, devices, oversized notes

    def by_stem(self) -> dict[str, str]:
        """Lower-cased note name (no ``.md``) and path (no ``.md``) -> note path, as Obsidian
        resolves ``[[Name]]``: the shortest path wins a clash."""
        out: dict[str, str] = {}
        for path in sorted(self.notes, key=lambda p: (p.count("/"), p)):
            stem = path[:-3]
            out.setdefault(stem.lower(), path)
            out.setdefault(PurePosixPath(stem).name.lower(), path)
        return out

    def files_by_name(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for path in sorted(self.files, key=lambda p: (p.count("/"), p)):
            out.setdefault(path.lower(), path)
            out.setdefault(PurePosixPath(path).name.lower(), path)
        return out


def scan(src: Path) -> Vault:
    if src.is_symlink() or not src.is_dir():
        raise VaultError(f"import: {src} is not a folder")
    root = src.resolve()
    vault = Vault(root)
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_here = Path(here).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _link(Path(here, d)))
        for name in sorted(files):
            rel = (rel_here / name).as_posix()
            if name.startswith("."):
                continue
            try:
                st = os.lstat(Path(here, name))
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                vault.skipped.append(rel)
            elif name.lower().endswith(".md"):
                if st.st_size > MAX_NOTE_BYTES:
                    vault.skipped.append(rel)
                else:
                    vault.notes.append(rel)
            else:
                vault.files.append(rel)
    return vault


def _link(path: Path) -> bool:
    return path.is_symlink()


def unzip(archive: Path, into: Path) -> Path:
    """An exported zip, unpacked into ``into`` with every name checked: no absolute paths,
    no ``..``, no links; nothing lands outside ``into``."""
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = info.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith("/") or ".." in parts or ":" in name or not parts:
                    raise VaultError(f"import: {archive}: unsafe name {name!r} in the zip")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise VaultError(f"import: {archive}: {name!r} is a link")
                if info.is_dir():
                    continue
                out = into.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as fin, out.open("wb") as fout:
                    while chunk := fin.read(1 << 16):
                        fout.write(chunk)
    except zipfile.BadZipFile as e:
        raise VaultError(f"import: {archive}: not a zip file ({e})") from None
    return into


__all__ = ["FILES_DIR", "Vault", "VaultError", "scan", "unzip"]
