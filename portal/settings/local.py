"""`make run` on a fresh machine: SQLite, tasks in-process, a development secret and master key under var/.

With DATABASE_URL and REDIS_URL set, the same settings use them, and tasks go through the broker.
"""

import base64
import secrets
from collections.abc import Callable

from .base import *  # noqa: F403
from .base import REDIS_URL, VAR_DIR, env

# GENERAL
# ------------------------------------------------------------------------------
ENCLAVE_ENV = "local"
DEBUG = env.bool("DJANGO_DEBUG", default=True)
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _dev_secret(name: str, make: Callable[[], str]) -> str:
    """A secret generated once into var/ so that restarts keep sessions and keys."""
    path = VAR_DIR / name
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="") or _dev_secret("dev-secret-key", lambda: secrets.token_urlsafe(50))
MASTER_KEY = env.str("MASTER_KEY", default="") or _dev_secret(
    "dev-master-key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
)

# CELERY: in-process without a broker
# ------------------------------------------------------------------------------
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
