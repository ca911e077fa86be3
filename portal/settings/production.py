"""Production: every outside part is named by the environment; nothing secret has a default."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import database_from_url, env

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
DATABASES = {"default": database_from_url(_required("DATABASE_URL"))}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
REDIS_URL = _required("REDIS_URL")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
CELERY_BROKER_URL = REDIS_URL

# SECURITY
# ------------------------------------------------------------------------------
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_NAME = "__Host-sessionid"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_NAME = "__Host-csrftoken"
