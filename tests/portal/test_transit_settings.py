"""Production's encryption in transit (SECURITY.md A9), read from the settings production actually computes (a
fresh process with the production settings module): HTTPS only, HSTS, secure cookies, PostgreSQL with
sslmode=verify-full, Redis (cache and broker) as rediss:// with the server's certificate checked; anything weaker
refuses to start unless REQUIRE_TLS=false says so."""

from __future__ import annotations

import json
import ssl

import pytest

from tests.portal.test_settings import PRODUCTION_ENV, _manage

SHOW = """
import json, ssl
from django.conf import settings
from portal.celery import app
cache = settings.CACHES["default"]
print(json.dumps({
    "ssl_redirect": settings.SECURE_SSL_REDIRECT,
    "https_only_paths": list(settings.HTTPS_ONLY_PATHS),
    "hsts": settings.SECURE_HSTS_SECONDS,
    "hsts_subdomains": settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "session_secure": settings.SESSION_COOKIE_SECURE,
    "csrf_secure": settings.CSRF_COOKIE_SECURE,
    "proxy_header": settings.SECURE_PROXY_SSL_HEADER,
    "db_options": settings.DATABASES["default"]["OPTIONS"],
    "db_host": settings.DATABASES["default"]["HOST"],
    "cache_location": cache["LOCATION"],
    "cache_options": {k: int(v) if isinstance(v, ssl.VerifyMode) else v for k, v in cache["OPTIONS"].items()},
    "broker_url": app.conf.broker_url,
    "broker_ssl": {
        k: int(v) if isinstance(v, ssl.VerifyMode) else v for k, v in (app.conf.broker_use_ssl or {}).items()
    },
    "log_handler_formatter": settings.LOGGING["handlers"]["console"]["formatter"],
}))
"""


def _production(**changes: str) -> dict:
    result = _manage("shell", "-c", SHOW, env={**PRODUCTION_ENV, **changes})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_speaks_only_tls():
    conf = _production()
    assert conf["ssl_redirect"] is True
    assert conf["https_only_paths"] == ["/api/", "/dicomweb/"]
    assert conf["hsts"] >= 31536000
    assert conf["hsts_subdomains"] is True
    assert conf["session_secure"] is True
    assert conf["csrf_secure"] is True
    assert conf["proxy_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]  # behind a proxy that terminates TLS
    assert conf["db_options"]["sslmode"] == "verify-full"
    assert conf["db_options"]["sslrootcert"] == "/etc/enclave/ca.pem"
    assert conf["cache_location"].startswith("rediss://")
    required = int(ssl.CERT_REQUIRED)
    tls = {"ssl_cert_reqs": required, "ssl_check_hostname": True, "ssl_ca_certs": "/etc/enclave/ca.pem"}
    # The cache's TLS options, and its short socket timeouts (a Redis that is down does not stall a request: B10).
    assert conf["cache_options"] == {**tls, "socket_connect_timeout": 1.0, "socket_timeout": 1.0}
    assert conf["broker_url"].startswith("rediss://")
    assert conf["broker_ssl"] == tls
    assert conf["log_handler_formatter"] == "json"


def test_gunicorn_serving_tls_itself_trusts_no_forwarded_proto():
    conf = _production(TLS_CERT="/etc/enclave/web.pem", TLS_KEY="/etc/enclave/web.key")
    assert conf["proxy_header"] is None


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DATABASE_URL", "postgres://enclave@db.example.org:5432/enclave", "sslmode=verify-full"),
        ("DATABASE_URL", "postgres://enclave@db.example.org:5432/enclave?sslmode=require", "sslmode=verify-full"),
        ("DATABASE_URL", "postgres://enclave@db.example.org:5432/enclave?sslmode=verify-ca", "sslmode=verify-full"),
        ("DATABASE_APP_URL", "postgres://enclave_app@db.example.org:5432/enclave", "sslmode=verify-full"),
        ("REDIS_URL", "redis://redis.example.org:6379/0", "rediss://"),
    ],
)
def test_production_refuses_plain_connections(name, value, says):
    result = _manage("check", env={**PRODUCTION_ENV, name: value})
    assert result.returncode != 0
    assert says in result.stderr
    assert "REQUIRE_TLS" in result.stderr


def test_local_sockets_and_the_explicit_way_out_are_accepted():
    unix = _production(
        DATABASE_URL="postgres://enclave@%2Frun%2Fpostgresql/enclave",
        REDIS_URL="unix:///run/redis.sock",
        DATABASE_APP_URL="postgres://enclave_app@%2Frun%2Fpostgresql/enclave",
    )
    assert unix["db_host"] == "/run/postgresql"
    assert unix["cache_options"] == {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}  # no TLS options
    plain = _production(
        REQUIRE_TLS="false",
        DATABASE_URL="postgres://enclave@db.example.org/enclave",
        DATABASE_APP_URL="postgres://enclave_app@db.example.org/enclave",
        REDIS_URL="redis://r.example.org/0",
    )
    assert plain["db_options"] == {}
    assert plain["broker_ssl"] == {}


@pytest.mark.parametrize(
    ("app_url", "says"),
    [("", "DATABASE_APP_URL must be set"), (PRODUCTION_ENV["DATABASE_URL"], "not the owner")],
)
def test_production_refuses_to_connect_as_the_owner_of_the_tables(app_url, says):
    """Row-level security (issue 14) holds only a role that owns nothing: production names it apart."""
    result = _manage("check", env={**PRODUCTION_ENV, "DATABASE_APP_URL": app_url})
    assert result.returncode != 0
    assert says in result.stderr
