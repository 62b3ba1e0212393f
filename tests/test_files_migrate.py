"""``python -m heaper_trio files migrate --to s3``: an install's stored files and thumbnails
copied into the bucket, resumable, checked against their hashes; a server switched to the
bucket then serves what the local one stored."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.cli import main
from heaper_trio.client import HeaperClient
from heaper_trio.keys import SERVER_KEY_FILE
from heaper_trio.ops.backup import backup
from heaper_trio.ops.migrate_files import migrate

from .objects_support import bucket, keys, s3_endpoint, s3_settings
from .test_files_objects import png, sha
from .test_sync import new_heap

__all__ = ["bucket", "s3_endpoint"]  # fixtures, used by name


def stored(data_dir: Path, content: bytes, name: str | None = None) -> str:
    h = name or hashlib.sha256(content).hexdigest()
    path = data_dir / "files" / "sha256" / h[:2] / h[2:4] / h
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return h


def test_migrate_copies_checks_and_resumes(
    tmp_path: Path, s3_endpoint: str, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    good = [stored(data, os.urandom(n)) for n in (10, 70_000)]
    damaged = stored(data, b"not what the name says", name="ab" * 32)
    thumb = data / "thumbnails" / "generated" / "aa" / ("aa" * 32) / "image-small-v1.webp"
    thumb.parent.mkdir(parents=True)
    thumb.write_bytes(b"webp")
    theirs = data / "thumbnails" / "client" / "blk" / ("cc" * 32) / "image-small.png"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"png")
    args = ["files", "migrate", "--to", "s3", "--data-dir", str(data)]
    args += ["--s3-endpoint", s3_endpoint, "--s3-bucket", bucket]
    assert main(args) == 1  # one damaged file: said, and left out
    out = capsys.readouterr().out
    assert f"damaged, not copied: files/{damaged}" in out and "4 copied" in out
    want = [f"files/{h}" for h in good] + [f"thumbnails/aa/{'aa' * 32}/image-small-v1.webp"]
    want = sorted([*want, f"client-thumbnails/blk/{'cc' * 32}/image-small.png"])
    assert keys(s3_endpoint, bucket) == want
    Path(data / "files" / "sha256" / "ab" / "ab" / damaged).unlink()
    assert main(args) == 0  # again: nothing to copy
    assert (
        "0 copied, 4 already in the bucket; now set files_backend = s3" in capsys.readouterr().out
    )
    assert main(["files", "migrate", "--to", "s3", "--data-dir", str(data)]) == 2  # no bucket


@pytest.mark.engines("postgres")
async def test_a_server_on_the_bucket_serves_what_the_local_one_stored(
    start_server: Any, make_settings: Any, tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    local = await start_server(data_dir=str(tmp_path / "local"))
    image = png()
    async with HeaperClient(local.url) as client:
        await client.login()
        heap = await new_heap(client)
        r = await client.post(
            f"/api/upload/file/{heap['id']}/blk", files={"file": ("a.png", image, "image/png")}
        )
        assert r.status_code == 200, r.text
        assert (await client.get(f"/api/file/{sha(image)}/thumbnail/tiny/a")).status_code == 200
        report = await migrate(
            make_settings(
                data_dir=str(tmp_path / "local"), s3_bucket=bucket, s3_endpoint=s3_endpoint
            )
        )
        assert (report.copied, report.damaged) == (2, [])
        (tmp_path / "cloud").mkdir()
        shutil.copy2(tmp_path / "local" / SERVER_KEY_FILE, tmp_path / "cloud" / SERVER_KEY_FILE)
        cloud = await start_server(
            **s3_settings(s3_endpoint, bucket), data_dir=str(tmp_path / "cloud")
        )
        async with HeaperClient(cloud.url, key=client.key) as again:
            await again.login()
            r = await again.get(f"/api/file/{sha(image)}/raw/a.png", headers={"Range": "bytes=1-3"})
            assert r.status_code == 206 and r.content == image[1:4]
            r = await again.get(f"/api/file/{sha(image)}/thumbnail/tiny/a")
            assert r.status_code == 200
        assert cloud.services.media.stats.jobs == 0  # the thumbnail came from the bucket


@pytest.mark.engines("sqlite")
async def test_a_backup_names_the_bucket_and_copies_no_file(
    start_server: Any, tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    server = await start_server(**s3_settings(s3_endpoint, bucket))
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        data = os.urandom(5000)
        r = await client.post(
            f"/api/upload/file/{heap['id']}/blk", files={"file": ("a.bin", data, "x/y")}
        )
        assert r.status_code == 200, r.text
    manifest = await trio.to_thread.run_sync(backup, server.services.settings, tmp_path / "bk")
    assert manifest["files_in_bucket"] == bucket and manifest["missing"] == {}
    assert not any(name.startswith("files/") for name in manifest["files"])
