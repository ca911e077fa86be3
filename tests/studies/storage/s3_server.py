"""A local S3-compatible server for the tests: moto in server mode, in its own process on a free loopback port, and
blob stores on it built by the settings' own `blob_store` (so the S3 options tested are the ones deployed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

STARTUP_SECONDS = 30
ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )  # fmt: skip


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_s3_server() -> S3Server:
    port = _free_tcp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto_server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return S3Server(endpoint=f"http://127.0.0.1:{port}", process=process)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("moto_server did not start")


def s3_storages(server: S3Server, monkeypatch: pytest.MonkeyPatch, *, sse: str = "AES256") -> dict:
    """STORAGES with the blob, replica and quarantine stores in fresh buckets of `server`, through the settings'
    `blob_store` and its BLOB_S3_* variables."""
    from django.conf import settings

    from portal.settings.base import blob_store  # the deployed settings function

    for name, value in {
        "BLOB_S3_ENDPOINT_URL": server.endpoint,
        "BLOB_S3_REGION": REGION,
        "BLOB_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "BLOB_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "BLOB_S3_SSE": sse,
    }.items():
        monkeypatch.setenv(name, value)
    client = server.client()
    stores = {}
    for store in ("blobs", "replica", "quarantine"):
        bucket = f"enclave-{store}-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        stores[store] = blob_store(f"s3://{bucket}/archive", default_dir=None)  # type: ignore[arg-type]
    return {**settings.STORAGES, **stores}


def s3_server_fixture() -> Iterator[S3Server]:
    server = start_s3_server()
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
