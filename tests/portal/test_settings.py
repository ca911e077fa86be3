"""The effective configuration: Celery (misspelled keys fail silently), production's refusals, deploy checks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from portal.celery import app as celery_app
from portal.log_filters import StripQueryStringFilter

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "portal.settings.production",
    "SECRET_KEY": "p" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
    "MASTER_KEY": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    "ALLOWED_HOSTS": "enclave.example.org",
    "DATABASE_URL": "postgres://enclave@db.example.org:5432/enclave?sslmode=verify-full&sslrootcert=/etc/enclave/ca.pem",
    "DATABASE_APP_URL": "postgres://enclave_app@db.example.org:5432/enclave?sslmode=verify-full"
    "&sslrootcert=/etc/enclave/ca.pem",
    "REDIS_URL": "rediss://redis.example.org:6380/0",
    "REDIS_TLS_CA": "/etc/enclave/ca.pem",
    "CLAMD_ADDRESS": "unix:///run/clamav/clamd.ctl",
}

# Variables of the test process that would change what production settings decide.
OPTIONAL_ENV = ("DJANGO_ALLOW_ASYNC_UNSAFE", "REQUIRE_TLS", "TLS_CERT", "TLS_KEY", "SECURE_SSL_REDIRECT", "LOG_FORMAT")


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV and k not in OPTIONAL_ENV}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_celery_configuration_is_what_we_meant():
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_time_limit
    assert conf.task_soft_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit
    # Redis gives an unacknowledged task back after the visibility timeout: it must outlast any task (H2).
    assert conf.broker_transport_options["visibility_timeout"] >= 2 * conf.task_time_limit
    assert conf.beat_scheduler == "portal.beat:Scheduler"  # django-celery-beat's DatabaseScheduler, made safe at a stop
    assert celery_app.task_cls == "celery.contrib.django.task:DjangoTask"
    assert conf.beat_schedule["memberships-end-due"]["task"] == "tenants.tasks.memberships_end_due"
    celery_app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    assert "tenants.tasks.memberships_end_due" in celery_app.tasks


def test_base_settings_hash_passwords_with_argon2():
    from portal.settings import base

    assert base.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    lengths = [v.get("OPTIONS", {}).get("min_length") for v in base.AUTH_PASSWORD_VALIDATORS]
    assert 15 in lengths
    assert any("CommonPasswordValidator" in v["NAME"] for v in base.AUTH_PASSWORD_VALIDATORS)


def test_production_refuses_to_start_without_its_secrets():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_deploy_check_is_clean():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_demo_is_refused_in_production():
    result = _manage("demo", env=PRODUCTION_ENV)
    assert result.returncode != 0
    assert "refused under production" in result.stderr


def test_query_strings_never_reach_plain_logs():
    line = "GET /dicomweb/north/studies?PatientName=DOE^JANE HTTP/1.1"
    record = logging.LogRecord("django.server", logging.INFO, __file__, 1, '"%s" %s %s', (line, 200, 12), None)
    StripQueryStringFilter().filter(record)
    assert "DOE" not in record.getMessage()
    assert "/dicomweb/north/studies?" in record.getMessage()


@pytest.mark.django_db
def test_security_headers_on_pages_and_api(client):
    for path in ("/accounts/login/", "/api/schema/"):
        response = client.get(path)
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
        assert "object-src 'none'" in response["Content-Security-Policy"]
        assert response["Cache-Control"] == "no-store"
        assert response["X-Request-ID"]


@pytest.mark.django_db
def test_openapi_schema_needs_sign_in(client, admin_a, client_for):
    assert client.get("/api/schema/").status_code in (401, 403)
    response = client_for(admin_a).get("/api/schema/")
    assert response.status_code == 200
    assert b"openapi" in response.content


def test_settings_name_no_secret_defaults_in_base():
    from portal.settings import base

    assert os.environ.get("SECRET_KEY", "") == base.SECRET_KEY
    assert settings.ENCLAVE_ENV == "test"


def test_log_filter_keeps_mapping_arguments():
    record = logging.LogRecord("celery", logging.INFO, __file__, 1, "Task %(name)s: %(path)s", None, None)
    record.args = {"name": "t", "path": "/dicomweb/north/studies?PatientID=123"}
    StripQueryStringFilter().filter(record)
    assert record.getMessage() == "Task t: /dicomweb/north/studies?…"
