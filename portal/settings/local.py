"""`make run` and `make dev`: PostgreSQL and Redis (Valkey) as everywhere, a development secret and master key
under var/, mail written to files in var/mail/.

`make run` starts the embedded PostgreSQL and Valkey (scripts/stack.py) unless DATABASE_URL and REDIS_URL are set,
and passes their URLs on. A `manage.py` command run by hand while they are up finds them in var/ by itself.
DEBUG is off, as in production (styled 403, 404 and 500 pages); `make dev` turns it on with DJANGO_DEBUG=true.
"""

import base64
import secrets
from collections.abc import Callable
from urllib.parse import quote

from .base import *  # noqa: F403
from .base import DATABASE_ENGINE, VAR_DIR, database_app, database_from_url, env

# GENERAL
# ------------------------------------------------------------------------------
ENCLAVE_ENV = "local"
DEBUG = env.bool("DJANGO_DEBUG", default=False)
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

# THE EMBEDDED STACK, when the environment names none (scripts/stack.py keeps it in var/)
# ------------------------------------------------------------------------------
if not env.str("DATABASE_URL", default="") and (VAR_DIR / "pg" / ".s.PGSQL.5432").exists():
    DATABASE_OWNER = {
        **database_from_url(f"postgres://enclave@{quote(str(VAR_DIR / 'pg'), safe='')}/enclave"),
        "ENGINE": DATABASE_ENGINE,
    }
    DATABASES = {"default": database_app(DATABASE_OWNER)}
if not env.str("REDIS_URL", default="") and (VAR_DIR / "valkey" / "port").exists():
    REDIS_URL = f"redis://127.0.0.1:{(VAR_DIR / 'valkey' / 'port').read_text().strip()}/0"
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL

# EMAIL: written as files to var/mail/ (one file per message), never sent
# ------------------------------------------------------------------------------
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR_DIR / "mail"
