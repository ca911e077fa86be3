"""Production: every outside part is named by the environment; nothing secret has a default."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import APP_CONN_MAX_AGE, DATABASE_ENGINE, database_from_url, env, redis_cache, redis_tls_options

ENCLAVE_ENV = "production"
DEBUG = False


def _required(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in the environment for production.")
    return value


# GENERAL
# ------------------------------------------------------------------------------
SECRET_KEY = _required("SECRET_KEY")
MASTER_KEY = _required("MASTER_KEY")
CLAMD_ADDRESS = _required("CLAMD_ADDRESS")
ALLOWED_HOSTS = [h for h in _required("ALLOWED_HOSTS").split(",") if h]
# Two roles (issue 14, README "Database roles"): DATABASE_URL owns the tables (migrations, backups, the restore
# drill); DATABASE_APP_URL is the application's role, which owns nothing and is held by row-level security.
# Persistent connections (APP_CONN_MAX_AGE, 600 s) unless DB_POOL_MAX (a pool) or DB_PGBOUNCER says otherwise
# (README "Past one machine").
DATABASE_OWNER = {**database_from_url(_required("DATABASE_URL")), "ENGINE": DATABASE_ENGINE}
DATABASES = {
    "default": {
        **database_from_url(_required("DATABASE_APP_URL"), conn_max_age=APP_CONN_MAX_AGE),
        "ENGINE": DATABASE_ENGINE,
    }
}
if DATABASES["default"].get("USER") == DATABASE_OWNER.get("USER"):
    raise ImproperlyConfigured("DATABASE_APP_URL must name the application's role, not the owner of DATABASE_URL.")
REDIS_URL = _required("REDIS_URL")
CACHES = {"default": redis_cache(REDIS_URL)}
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_USE_SSL = redis_tls_options(REDIS_URL) or None

# ENCRYPTION IN TRANSIT (SECURITY.md A9): no patient data crosses a network in the clear
# ------------------------------------------------------------------------------
# PostgreSQL over TCP only with sslmode=verify-full (the server's certificate and host name checked; sslrootcert
# names the CA), Redis only as rediss://. A Unix socket never leaves the machine and needs neither. REQUIRE_TLS=false
# is the explicit, visible way out (a private network that encrypts below us), never a default.
REQUIRE_TLS = env.bool("REQUIRE_TLS", default=True)


def _transit_tls_check(*, database: dict, redis_url: str) -> None:
    host = str(database.get("HOST") or "")
    local = host == "" or host.startswith("/")
    if not local and database.get("OPTIONS", {}).get("sslmode") != "verify-full":
        raise ImproperlyConfigured(
            "DATABASE_URL must ask for sslmode=verify-full (e.g. ?sslmode=verify-full&sslrootcert=/path/ca.pem) "
            "when REQUIRE_TLS is on."
        )
    if redis_url.partition("://")[0] not in ("rediss", "unix"):
        raise ImproperlyConfigured("REDIS_URL must be a rediss:// URL (Redis over TLS) when REQUIRE_TLS is on.")


if REQUIRE_TLS:
    _transit_tls_check(database=DATABASES["default"], redis_url=REDIS_URL)
    _transit_tls_check(database=DATABASE_OWNER, redis_url=REDIS_URL)

# SECURITY
# ------------------------------------------------------------------------------
# Pages are redirected to HTTPS; the API and DICOMweb refuse plain HTTP (base.HTTPS_ONLY_PATHS). gunicorn serves
# TLS itself when TLS_CERT / TLS_KEY are set (portal/gunicorn_conf.py), else a proxy in front terminates TLS and
# says so in X-Forwarded-Proto, which gunicorn trusts only from FORWARDED_ALLOW_IPS.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# A client talking to gunicorn's own TLS could claim X-Forwarded-Proto itself: the header counts only behind a proxy.
SECURE_PROXY_SSL_HEADER = None if env.str("TLS_CERT", default="") else ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_NAME = "__Host-sessionid"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_NAME = "__Host-csrftoken"
