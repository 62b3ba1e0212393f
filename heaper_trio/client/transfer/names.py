"""File names an export writes and an import trusts.

Notes are ``<title slug>-<first 8 characters of the block id>.md`` (longer ids when two would
clash), attachments ``files/<first 8 of the hash>-<safe name>``: safe on every file system,
unique, and the same for the same block in every export. On import no name from the source
reaches a path unchecked: :func:`inside` keeps every path under the source folder.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path, PurePosixPath

FILES_DIR = "files"
SLUG_MAX = 60
SHORT_ID = 8


def slug(title: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")
    return words[:SLUG_MAX].rstrip("-") or "untitled"


def safe_file_name(name: str) -> str:
    """A file's own name kept readable: no separators, no control characters, no leading
    dots, at most 100 characters (the extension kept)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = "".join(c if c.isprintable() and c not in '<>:"|?*' else "_" for c in base)
    base = base.strip(" .") or "file"
    stem, dot, ext = base.rpartition(".")
    if dot and stem and len(ext) <= 10:
        return stem[: 100 - len(ext) - 1] + "." + ext
    return base[:100]


class NoteNames:
    """Unique note names for one export, stable per block id."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def name(self, title: str, block_id: str) -> str:
        base = slug(title)
        clean = re.sub(r"[^A-Za-z0-9_-]", "", block_id) or "block"
        for n in range(min(SHORT_ID, len(clean)), len(clean) + 1):
            candidate = f"{base}-{clean[:n].lower()}.md"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate
        n = 2
        while f"{base}-{clean.lower()}-{n}.md" in self.taken:
            n += 1
        self.taken.add(f"{base}-{clean.lower()}-{n}.md")
        return f"{base}-{clean.lower()}-{n}.md"


def attachment_path(file_hash: str, name: str) -> str:
    return f"{FILES_DIR}/{file_hash[:SHORT_ID]}-{safe_file_name(name)}"


def inside(root: Path, relative: str, base: Path | None = None) -> Path | None:
    """``relative`` (a link target: percent-decoded, POSIX) resolved against ``base`` (a
    note's folder) and kept only if it names a regular file under ``root`` reached through
    no symbolic link. Absolute paths, ``..`` past the root, links and devices answer None."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")):
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", relative):  # a URL or a drive letter
        return None
    start = base if base is not None else root
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    where = start.relative_to(root).parts if start != root else ()
    stack = list(where)
    for p in parts:
        if p == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(p)
    path = root
    for p in stack:
        path = path / p
        if path.is_symlink():
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(st.st_mode) else None
