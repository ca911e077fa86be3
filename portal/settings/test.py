"""The test suite: PostgreSQL and Redis as in production, fast hashing, eager tasks for unit tests.

Integration tests start a real Celery worker and switch eager mode off for themselves.
"""

import atexit
import base64
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .base import *  # noqa: F403
from .base import env, redis_cache

ENCLAVE_ENV = "test"

# The throw-away folders this process makes (static files, stored files, blobs) are removed when it exits, so that
# test runs do not fill /tmp (a day of runs had left 1.5 GB). Only by the process that made them: a child forked
# from it (a listener's process, a pool's) runs the same exit handlers, and must not take its parent's folders.
_MAKER = os.getpid()


def _scratch_remove(folder: Path) -> None:
    if os.getpid() == _MAKER:
        shutil.rmtree(folder, ignore_errors=True)  # gone already, or a file held open by a child: nothing to keep


def _scratch(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(_scratch_remove, folder)
    return folder


DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production-0123456789abcdefghijklmnopqrstuvwxyz"  # noqa: S105
MASTER_KEY = base64.b64encode(b"\x01" * 32).decode()
# base64 of SHA-256("enclave test audit signing key, not for production"): an Ed25519 seed for the tests only.
AUDIT_SIGNING_KEY = "W90Q91c/dJGJLIPj1tanA/MurqzuQOasWPNlhzlzYSM="  # pragma: allowlist secret
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

# DATABASES: PostgreSQL, as in production
# ------------------------------------------------------------------------------
# DATABASE_URL is the owner (migrations, flush); the suite runs as the application's role under row-level security
# (tests/conftest.py makes that role when it is missing, as the server's superuser).
# Connections closed after each request, as the suite has always run (threads of the listener and of live servers
# open their own); production's and `make run`'s persistent ones are tested in tests/portal/test_database_pool.py.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)  # noqa: F405

# PASSWORDS: a fast hasher; tests/portal/test_settings.py checks the production list starts with Argon2
# ------------------------------------------------------------------------------
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# CACHES: real Redis, one key prefix per run so parallel test processes do not share throttles
# ------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        **redis_cache(REDIS_URL),  # the deployed backend (portal.web.cache) and its timeouts
        "KEY_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
    }
}

# CELERY: eager and propagating for unit tests
# ------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
# Tasks run in-process, one per item: no wait between an ingest task's rounds (a test of it sets its own).
INGEST_GATHER_SECONDS = 0.0
CELERY_TASK_EAGER_PROPAGATES = True
# A crash-test worker recovers unacknowledged messages within seconds, from unacked keys of its own so that it
# never redelivers another worker's messages (tests/integration/conftest.py); production keeps base.py's options.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    **env.json("CELERY_TEST_TRANSPORT_OPTIONS", default={}),
}

# EMAIL
# ------------------------------------------------------------------------------
# A real worker started by a test writes its mail as files the test reads (tests/integration); otherwise locmem.
EMAIL_BACKEND = env.str("ENCLAVE_TEST_EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
EMAIL_FILE_PATH = env.str("ENCLAVE_TEST_EMAIL_FILE_PATH", default="")

# STATIC: no manifest needed in tests
# ------------------------------------------------------------------------------
STATIC_ROOT = _scratch("enclave-static-")
# A fresh folder per process, unless the test process hands its own to the worker and listener it starts.
_STORE_ROOT = Path(env.str("ENCLAVE_TEST_STORE_ROOT", default="") or _scratch("enclave-stores-"))
# Tests write thousands of small blobs to throw-away folders: not synced (tests/studies/storage/test_durable.py
# turns it on and shows what is synced).
BLOB_SYNC = False
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": _scratch("enclave-files-")},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "blobs": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": _STORE_ROOT / "blobs"}},
    "replica": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": _STORE_ROOT / "replica"},
    },
    "quarantine": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": _STORE_ROOT / "quarantine"},
    },
}

# THROTTLES: high enough that the suite is never throttled by accident; throttle tests lower them
# ------------------------------------------------------------------------------
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"anon": "10000/min", "user": "10000/min"}}  # noqa: F405
# RATE LIMITS: the same, for the policy of portal.web.limits (tests/portal/test_rate_limits.py lowers them)
RATE_LIMITS = {
    action: dict.fromkeys(kinds, "100000/minute")
    for action, kinds in RATE_LIMITS.items()  # noqa: F405
}
