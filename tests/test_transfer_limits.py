"""What an import refuses to unpack or open: a zip past its size limits (a zip bomb), a zip
whose names clash as file and folder, and a file reached through a symbolic link put in place
after the scan. Each stops before anything of it reaches the server."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.cli import build_parser
from heaper_trio.client import HeaperClient
from heaper_trio.client.transfer import importer, vault
from heaper_trio.client.transfer.commands import run_async
from heaper_trio.client.transfer.export import TransferError
from heaper_trio.client.transfer.importer import import_source
from heaper_trio.client.transfer.vault import Vault, VaultError, ZipLimits, open_inside, unzip


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # 16 MiB of zeros deflate to about 16 KiB: what a bomb is made of, at a size a test affords.
    bomb = _zip(tmp_path / "bomb.zip", [("a.md", b"# a"), ("zeros.bin", bytes(16 << 20))])
    assert bomb.stat().st_size < 1 << 20
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(VaultError, match=r"'zeros.bin'.*8 MiB per entry") as e:
        unzip(bomb, into, ZipLimits(total=1 << 30, entry=8 << 20))
    assert "nothing was imported" in str(e.value)
    assert not any(into.iterdir())  # the declared size was enough to refuse it
    # Each entry within its limit, but not all of them together.
    pair = _zip(tmp_path / "pair.zip", [("x.bin", bytes(3 << 20)), ("y.bin", bytes(3 << 20))])
    with pytest.raises(VaultError, match=r"'y.bin'.*5 MiB in all"):
        unzip(pair, tmp_path / "pair", ZipLimits(total=5 << 20, entry=4 << 20))
    unzip(pair, tmp_path / "fits", ZipLimits(total=6 << 20, entry=3 << 20))
    assert (tmp_path / "fits" / "y.bin").stat().st_size == 3 << 20


def test_a_zip_of_too_many_entries_is_refused_before_its_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty entries pass every size limit; their number is capped by walking the directory's
    headers before ``zipfile`` builds an object for each, so a zip of millions costs nothing
    to refuse. The count its end record declares is not trusted: ``zipfile`` ignores it."""
    names = [f"d{i // 10}/{i}.md" for i in range(50)]
    archive = _zip(tmp_path / "many.zip", [(n, b"") for n in names])
    data = archive.read_bytes()
    end = data.rindex(b"PK\x05\x06")  # the end record: entries on this disk, then in all
    lying = tmp_path / "lying.zip"
    lying.write_bytes(data[: end + 8] + b"\x01\x00\x01\x00" + data[end + 12 :])
    parsed: list[str] = []
    original = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]

    def counting(self: zipfile.ZipFile) -> None:
        parsed.append("directory")
        original(self)

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counting)
    with zipfile.ZipFile(lying) as z:
        assert len(z.infolist()) == 50  # zipfile reads all 50 whatever the record says
    parsed.clear()
    for source in (archive, lying):
        into = tmp_path / f"into-{source.stem}"
        with pytest.raises(VaultError, match=r"more than 49 entries \(--zip-max-entries\)"):
            unzip(source, into, ZipLimits(entries=49))
        assert parsed == [] and not any(into.iterdir())
    unzip(lying, tmp_path / "fits", ZipLimits(entries=50))
    assert len(list((tmp_path / "fits").rglob("*.md"))) == 50
    # Without zipfile's end-record reader, the parsed list is still counted.
    monkeypatch.setattr(vault, "_END_RECORD", None)
    parsed.clear()
    with pytest.raises(VaultError, match="more than 49 entries"):
        unzip(archive, tmp_path / "late", ZipLimits(entries=49))
    assert parsed == ["directory"]


def test_a_zip_whose_sizes_lie_is_refused_at_the_size_it_declared(tmp_path: Path) -> None:
    """The limits are checked against the declared sizes, which a zip can understate:
    ``zipfile`` then inflates no more than declared and fails the entry's CRC check."""
    archive = _zip(tmp_path / "x.zip", [("big.bin", bytes(2 << 20))])
    with zipfile.ZipFile(archive) as z:
        declared = z.getinfo("big.bin").file_size
    assert declared == 2 << 20
    lying = ZipLimits(total=1 << 20, entry=1 << 20)
    original = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]

    def understated(self: zipfile.ZipFile) -> None:
        original(self)
        for info in self.infolist():
            info.file_size = 1000  # what the central directory claims

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.ZipFile, "_RealGetContents", understated)
        with pytest.raises(VaultError, match=r"'big\.bin'"):
            unzip(archive, tmp_path / "into", lying)
    assert (tmp_path / "into" / "big.bin").stat().st_size <= 1000


@pytest.mark.parametrize(
    ("names", "refused"),
    [
        (["a", "a/b"], "a/b"),
        (["a/b", "a"], "a"),
        (["a", "a/"], "a/"),
        (["notes/x.md", "notes/x.md"], "notes/x.md"),
    ],
)
def test_a_zip_naming_a_file_and_a_folder_alike_is_refused_by_name(
    tmp_path: Path, names: list[str], refused: str
) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's own warning about a name written twice
        for name in names:
            z.writestr(name, b"x")
    with pytest.raises(VaultError, match=f"entry '{refused}' clashes"):
        unzip(archive, tmp_path / "into")


def test_files_are_opened_without_following_any_link(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("mine")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "sub" / "out.txt")  # leaves the folder
    os.symlink(root / "sub" / "a.txt", root / "sub" / "in.txt")  # stays inside: still a link
    os.symlink(root / "sub", root / "linked")  # a folder on the way
    os.mkfifo(root / "pipe")
    with open_inside(root, "sub/a.txt") as f:
        assert f.read() == b"mine"
    for rel in ("sub/out.txt", "sub/in.txt", "linked/a.txt"):
        with pytest.raises(VaultError, match="symbolic link"):
            open_inside(root, rel)
    with pytest.raises(VaultError, match="not a regular file"):
        open_inside(root, "pipe")  # refused, without blocking on the open
    for rel in ("../secret.txt", "/etc/passwd", "sub/../sub/a.txt"):
        with pytest.raises(VaultError):
            open_inside(root, rel)


@pytest.mark.engines("sqlite")  # the client's unpacking and opening; no storage difference
async def test_an_import_refused_for_its_zip_or_a_swapped_link_sends_nothing_of_it(
    server: RunningServer,
    admin: HeaperClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heap = await admin.heaps.create("Limits")
    before = await admin.call("GET", f"/api/heap/stats/{heap.id}")
    big = _zip(tmp_path / "big.zip", [("Note.md", b"# Note\n"), ("zeros.bin", bytes(3 << 20))])
    with pytest.raises(TransferError, match=r"'zeros\.bin'"):
        await import_source(admin, big, heap.id, zip_limits=ZipLimits(2 << 20, 2 << 20))
    # The command line's flags, and its one line on stderr (status 2).
    key = tmp_path / "me.key"
    admin.key.save(key)
    flags = ["--heap", heap.id, "--server", server.url, "--key", str(key)]
    args = build_parser().parse_args(["import", str(big), *flags, "--zip-max-total-mib", "2"])
    assert await run_async(args) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("heaper_trio: import:") and "--zip-max-total-mib" in line, line
    args = build_parser().parse_args(["import", str(big), *flags, "--zip-max-entries", "1"])
    assert await run_async(args) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "more than 1 entries" in line and "--zip-max-entries" in line, line
    clash = _zip(tmp_path / "clash.zip", [("Note.md", b"# Note\n"), ("Note.md/x", b"x")])
    with pytest.raises(TransferError, match=r"'Note\.md/x' clashes"):
        await import_source(admin, clash, heap.id)
    assert await admin.call("GET", f"/api/heap/stats/{heap.id}") == before  # nothing went in

    # An attachment swapped for a link to a file outside, between the scan and its upload.
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "pic.txt").write_text("an attachment")
    (vault / "Note.md").write_text("![[pic.txt]]\n")
    (tmp_path / "secret.txt").write_text("secret outside the vault")
    scan = importer.scan

    def scan_then_swap(src: Path) -> Vault:
        found = scan(src)
        (vault / "pic.txt").unlink()
        os.symlink(tmp_path / "secret.txt", vault / "pic.txt")
        return found

    monkeypatch.setattr(importer, "scan", scan_then_swap)
    report = await import_source(admin, vault, heap.id)
    assert report.files == 0 and report.skipped == ["pic.txt"]
    assert "pic.txt not uploaded" in capsys.readouterr().err
    assert (await admin.call("GET", f"/api/heap/stats/{heap.id}"))["files"] == 0
