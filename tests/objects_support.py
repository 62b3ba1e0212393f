"""An S3-compatible server on loopback for the file tests: moto's standalone server, one per
test session (per xdist worker), a fresh bucket per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

# boto3 reads these (the server in-process and the tests' own client alike); moto accepts any
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "heaper-test",
    "AWS_SECRET_ACCESS_KEY": "heaper-test-secret",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata service
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()  # nothing to keep: its objects live in its memory
        proc.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"heaper-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_settings(endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {"files_backend": "s3", "s3_endpoint": endpoint, "s3_bucket": bucket, **extra}


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    found = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in found.get("Contents", []))


def open_multipart(endpoint: str, bucket: str) -> list[str]:
    found = s3_client(endpoint).list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in found.get("Uploads", [])]
