"""`make run`'s settings (portal.settings.local): DEBUG off, mail to files in var/mail/, PostgreSQL only, and the
embedded stack found in the var folder when the environment names none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from portal.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]
PRINT = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'email': s.EMAIL_BACKEND, 'mail': str(s.EMAIL_FILE_PATH), "
    "'engine': s.DATABASES['default']['ENGINE'], 'host': s.DATABASES['default']['HOST'], "
    "'name': s.DATABASES['default']['NAME'], 'redis': s.REDIS_URL, 'broker': s.CELERY_BROKER_URL}))"
)


def _local(var: Path, **extra: str) -> dict:
    keep = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_DEBUG")}
    env = {**keep, "DJANGO_SETTINGS_MODULE": "portal.settings.local", "ENCLAVE_VAR_DIR": str(var), **extra}
    done = subprocess.run(
        [sys.executable, "-c", PRINT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def test_local_settings_run_without_debug_and_write_mail_to_var(tmp_path):
    local = _local(tmp_path)
    assert local["debug"] is False
    assert local["email"] == "django.core.mail.backends.filebased.EmailBackend"
    assert local["mail"] == str(tmp_path / "mail")
    assert local["engine"] == "tenants.db"  # Django's PostgreSQL backend carrying the tenant scope
    assert _local(tmp_path, DJANGO_DEBUG="true")["debug"] is True  # make dev


def test_local_settings_find_the_embedded_stack_of_their_var_folder(tmp_path):
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / ".s.PGSQL.5432").touch()
    (tmp_path / "valkey").mkdir()
    (tmp_path / "valkey" / "port").write_text("6399\n")
    local = _local(tmp_path)
    assert local["host"] == str(tmp_path / "pg")
    assert local["name"] == "enclave"
    assert local["redis"] == "redis://127.0.0.1:6399/0"
    assert local["broker"] == "redis://127.0.0.1:6399/0"


def test_a_socket_folder_in_database_url_reaches_the_driver_decoded():
    from portal.settings.base import database_from_url

    config = database_from_url("postgres://enclave@%2Fsome%2Fvar%2Fpg/enclave")
    assert config["HOST"] == "/some/var/pg"
    assert config["USER"] == "enclave"


def test_beat_runs_the_folded_read_flush():
    schedule = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert "studies.tasks.read_tallies_flush" in schedule
    assert "studies.tasks.ingest_sweep" in schedule
    celery_app.loader.import_default_modules()
    assert "studies.tasks.read_tallies_flush" in celery_app.tasks
