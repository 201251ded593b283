"""TierLab settings.

Every value comes from the environment (django-environ). Without any environment the embedded
defaults run on a fresh machine: SQLite and the Celery filesystem broker under ``var/``, console
email, database-backed cache. ``TIERLAB_PRODUCTION=1`` switches to production mode, where secrets
and external services have no default and must be set.
"""

import base64
import hashlib
import os
from pathlib import Path

import environ
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from core.config_checks import CHECKED, problems_message, production_problems
from core.runfiles import localstripe_url as _localstripe_url

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the embedded default writes (SQLite, broker folders, static files, localstripe's state, and
# `make run`'s pid files and sockets under var/run/). TIERLAB_VAR_DIR moves all of it, e.g. for a test
# that runs `make run` beside a developer's own.
VAR_DIR = Path(os.environ.get("TIERLAB_VAR_DIR") or BASE_DIR / "var").resolve()
RUN_DIR = VAR_DIR / "run"

env = environ.Env()

# --- Mode -----------------------------------------------------------------------------------------
PRODUCTION = env.bool("TIERLAB_PRODUCTION", default=False)

if PRODUCTION:
    # No defaults for secrets or services in production, and no embedded default or local service
    # either: every missing variable and unsafe value is collected first, then refused in one message.
    _problems = production_problems({name: os.environ.get(name) for name in CHECKED})
    if _problems:
        raise ImproperlyConfigured(problems_message(_problems))
    SECRET_KEY = env.str("SECRET_KEY")
    DEBUG = env.bool("DEBUG", default=False)
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
    CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
else:
    SECRET_KEY = env.str("SECRET_KEY", default="tierlab-embedded-default-insecure-key-do-not-deploy")
    DEBUG = env.bool("DEBUG", default=True)
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
    CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Applications -----------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "csp",
    # TierLab, bottom layer first: each app imports only the apps listed before it.
    "core",
    "accounts",
    "tiers",
    "usage",
    "billing",
    "partners",
    # The simulator drives every app above; nothing imports it.
    "simulation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # Bounded bodies and JSON 404/405 on /v1/, /compat/v1/ and /api/, before anything reads the body.
    "core.middleware.ApiBoundaryMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
                "accounts.context_processors.teams",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------
# Embedded default: one SQLite file under var/ in WAL mode, so the web server, the Celery worker and
# beat (three processes) can read while one writes. IMMEDIATE transactions take the write lock at
# BEGIN, which turns SQLite's mid-transaction "database is locked" upgrades into plain waits.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # Keep connections: opening one runs the PRAGMAs above, which would cost every API request.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    # A kept connection is checked before each request's first query, so one the server dropped
    # meanwhile (restart, idle timeout) is replaced instead of failing the request. Django checks with
    # a SELECT 1 round trip; core.db.postgresql first polls the socket and skips the round trip when
    # nothing arrived (issue 17). CONN_HEALTH_CHECK=query keeps Django's engine and its SELECT 1.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    _health_check = env.str("CONN_HEALTH_CHECK", default="socket")
    if _health_check not in ("socket", "query"):
        raise ImproperlyConfigured(f"CONN_HEALTH_CHECK must be 'socket' or 'query', not {_health_check!r}")
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and _health_check == "socket":
        DATABASES["default"]["ENGINE"] = "core.db.postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ------------------------------------------------------------------------------------------
# Shared between processes: the database cache table by default, Redis in production.
CACHES = {
    "default": env.cache(
        "CACHE_URL",
        default="dbcache://tierlab_cache" if not PRODUCTION else environ.Env.NOTSET,
    )
}

# --- Authentication ---------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # Django's ModelBackend, refusing the demo operator (seed_demo) in production mode; first, so its
    # refusal stops allauth's backend from trying too.
    "accounts.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "home"

# django-allauth: email is the login; the email must be confirmed before the first login.
ACCOUNT_ADAPTER = "tiers.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory" if PRODUCTION else env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[TierLab] "
# Sign-up, login and password reset never reveal whether an address has an account: sign-up with a
# known address shows the same "check your email" page as a new one, and password reset says the
# same for known and unknown addresses.
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if PRODUCTION else "http"

# --- Email ------------------------------------------------------------------------------------------
# Embedded default prints mail (confirmation links included) to the `make run` console.
if PRODUCTION:
    vars().update(env.email_url("EMAIL_URL"))
else:
    vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="TierLab <billing@tierlab.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Internationalisation ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files -----------------------------------------------------------------------------------
# Served by WhiteNoise from the same WSGI process; nothing is ever loaded from the internet.
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# --- Security ---------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True


# --- Content-Security-Policy ------------------------------------------------------------------------
# django-csp: every page loads its scripts, styles, images and fonts from this origin only;
# nothing comes from the internet. Styles allow inline: the admin, Swagger UI and the usage gauges use
# style attributes and <style> blocks. The invoice's Print button is the one inline event handler,
# allowed by its hash. Swagger UI is drf-spectacular's split view: its start-up script is a file too.
def _csp_hash(source: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()}'"


CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, "'unsafe-hashes'", _csp_hash("window.print()")],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Request bodies ---------------------------------------------------------------------------------
# The APIs refuse larger bodies with 413 request_too_large (core.middleware, by Content-Length, before
# any view reads them). The partner ingest takes batches of 1,000 events, so it has its own limit.
# Django's DATA_UPLOAD_MAX_MEMORY_SIZE stays the backstop of request.body everywhere else (pages and
# forms keep Django's 2.5 MB); the partner ingest reads its stream itself, within its own limit.
TIERLAB_MAX_BODY_BYTES = env.int("TIERLAB_MAX_BODY_BYTES", default=1024 * 1024)
TIERLAB_PARTNER_MAX_BODY_BYTES = env.int("TIERLAB_PARTNER_MAX_BODY_BYTES", default=8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(TIERLAB_MAX_BODY_BYTES, 2_621_440)

# --- Django REST framework --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Key-authenticated requests also need the key's scope: read for GET, manage for writes.
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.IsTeamMember", "accounts.permissions.HasKeyScope"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # Bounded JSON (depth, lone surrogates, NUL: a 400 naming the param); forms for the browsable API.
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    # `?format=csv` on /api/v1/usage is the export, not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
    # Abuse protection only (DESIGN.md): billable quotas never go through DRF throttles. Atomic
    # fixed-window counters per API key and per team (both must have room), per user for sessions,
    # per client address for anonymous callers (accounts/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.AccountApiThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": env.str("TIERLAB_API_THROTTLE_KEY", default="600/min"),
        "team": env.str("TIERLAB_API_THROTTLE_TEAM", default="1200/min"),
        "user": env.str("TIERLAB_API_THROTTLE_USER", default="600/min"),
        "anon": env.str("TIERLAB_API_THROTTLE_ANON", default="60/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TierLab API",
    "DESCRIPTION": (
        "The model API (/v1 in the Llama API's shape, /compat/v1 in OpenAI's), the account API (/api/v1: your"
        " team, tiers, API keys, usage and invoices) and the partner API (usage reports, MAU, licences)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The APIs take JSON (core.parsers.BoundedJSONParser); the form parsers serve the browsable API only.
    "PARSER_WHITELIST": ["core.parsers.BoundedJSONParser"],
    # The model API and partner ingest (plain Django views) and every operation's refusals (config/openapi.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.openapi.postprocess_all_apis"],
    # Swagger UI from the drf-spectacular-sidecar package: served as static files, nothing from the internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Subscriptions and invoices both have a "status": name their enums apart in the schema.
    "ENUM_NAME_OVERRIDES": {
        "SubscriptionStatusEnum": "tiers.models.Subscription.Status",
        "InvoiceStatusEnum": "billing.models.Invoice.Status",
    },
}

# --- Celery -----------------------------------------------------------------------------------------
# Embedded default: kombu's filesystem transport, a folder of message files under var/celery, shared
# by the web server (producer), beat and the worker. Production: Redis or RabbitMQ.
CELERY_BROKER_DIR = Path(env.str("CELERY_BROKER_DIR", default=str(VAR_DIR / "celery")))
CELERY_BROKER_URL = (
    env.str("CELERY_BROKER_URL") if PRODUCTION else env.str("CELERY_BROKER_URL", default="filesystem://")
)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, made to survive a full disk: messages appear only complete, and a
    # file that is not a message is moved to corrupt/ and logged instead of stopping the worker.
    CELERY_BROKER_TRANSPORT = "core.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "corrupt_folder": str(CELERY_BROKER_DIR / "corrupt"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Synced into django-celery-beat's tables when beat starts; operators may then edit it in the admin.
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "core.tasks.heartbeat_record", "schedule": 30.0},
    # The cache invalidation feed's rows after an hour (core/invalidation.py): every process polls every second.
    "cache-invalidations-prune": {"task": "core.tasks.cache_invalidations_prune", "schedule": 3600.0},
    # The account API throttle's database counters idle for a day (embedded default only has rows).
    "throttle-counters-prune": {"task": "accounts.tasks.throttle_counters_prune", "schedule": 3600.0},
    # Redis quota backend only: usage events from the stream into UsageRecord. Its "enabled" is set below
    # from TIERLAB_QUOTA_BACKEND (beat writes it into the stored schedule at every start, so switching the
    # backend switches it; the database backend records on the request path and has nothing to drain).
    "usage-stream-drain": {"task": "usage.tasks.usage_stream_drain", "schedule": 2.0},
    # Reservations never settled (a crashed process, a lost connection) refunded after
    # TIERLAB_RESERVATION_TIMEOUT_SECONDS, their request ids freed; both quota backends.
    "usage-reservations-sweep": {"task": "usage.tasks.usage_reservations_sweep", "schedule": 60.0},
    # Request ids recorded more than TIERLAB_REQUEST_ID_RETENTION_SECONDS ago freed on their records.
    "usage-request-ids-release": {"task": "usage.tasks.usage_request_ids_release", "schedule": 3600.0},
    # Period close, charges due and dunning (billing/).
    "billing-run": {"task": "billing.tasks.billing_run", "schedule": 60.0},
    # Webhook events whose processing was never queued (broker down at receipt) are picked up here.
    "stripe-events-sweep": {"task": "billing.tasks.stripe_events_pending_process_task", "schedule": 300.0},
    # Usage records folded into hourly and daily rollups (usage/rollups.py), incrementally.
    "usage-rollup": {"task": "usage.tasks.usage_rollup_fold", "schedule": 30.0},
    # 80% / 100% of the monthly token quota and spend caps: one alert email per threshold per period.
    "usage-alerts": {"task": "usage.tasks.usage_alerts_evaluate", "schedule": 60.0},
    # Partner statements for every closed month not yet stated, exactly once per partner and month.
    "partner-statements": {"task": "partners.tasks.partner_statements_issue", "schedule": 3600.0},
    # The licence check for every model release date not yet checked.
    "license-checks": {"task": "partners.tasks.license_checks_run", "schedule": 3600.0},
}

# --- Stripe -----------------------------------------------------------------------------------------
# Embedded default: localstripe (a stateful fake Stripe) on loopback, started by `make run`, CI and a
# test fixture (`manage.py localstripe`). Production: real Stripe test mode keys, STRIPE_API_BASE empty.
LOCALSTRIPE_PORT = env.int("LOCALSTRIPE_PORT", default=8420)
# The localstripe `make run` started writes its URL here (manage.py localstripe --state var) and
# removes it when it stops, so a command run in another shell reaches it on whatever port it got.
LOCALSTRIPE_URL_FILE = RUN_DIR / "localstripe.url"
if PRODUCTION:
    STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY")
    STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET")
    STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
    STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY")
else:
    STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="sk_test_tierlab_localstripe")
    STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="whsec_tierlab_localstripe")
    STRIPE_API_BASE = env.str("STRIPE_API_BASE", default=_localstripe_url(LOCALSTRIPE_URL_FILE, LOCALSTRIPE_PORT))
    # Stripe.js on the card pages (localstripe accepts any ``pk_`` key).
    STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="pk_test_tierlab_localstripe")
# `make run` (config/run.py) starts localstripe only for the embedded default's own Stripe: not in production
# and not when STRIPE_API_BASE is given (empty = Stripe's real test mode, with sk_test_ keys).
TIERLAB_RUN_STARTS_LOCALSTRIPE = not PRODUCTION and "STRIPE_API_BASE" not in os.environ
# How long the Stripe client waits to connect and for an answer (no retries: billing/stripe_gateway.py).
STRIPE_CONNECT_TIMEOUT_SECONDS = env.float("STRIPE_CONNECT_TIMEOUT_SECONDS", default=3.0)
STRIPE_READ_TIMEOUT_SECONDS = env.float("STRIPE_READ_TIMEOUT_SECONDS", default=10.0)
# How long after a charge request is sent it may still reach Stripe: an attempt whose answer was lost
# is neither looked up nor sent again before then. Unset: derived from the timeouts above plus the
# time a proxy on the way may hold a request (73 s by default; stripe_gateway.charge_quiet_period).
TIERLAB_PAYMENT_QUIET_SECONDS = env.float("TIERLAB_PAYMENT_QUIET_SECONDS", default=None)

# --- Billing ----------------------------------------------------------------------------------------
# Dunning: after a failed charge, retry this many days after the first failure; after the last
# failure the team is moved to the free tier and emailed.
TIERLAB_DUNNING_RETRY_DAYS = env.list("TIERLAB_DUNNING_RETRY_DAYS", cast=int, default=[1, 3, 5])
# How many invoices a billing pass (the Celery task, `run_billing`) charges at once: a bounded pool of
# threads, each with its own database connection (PostgreSQL only; SQLite charges one at a time).
TIERLAB_PAYMENT_CONCURRENCY = env.int("TIERLAB_PAYMENT_CONCURRENCY", default=8)
# How many batches of the period close a billing pass closes at once on PostgreSQL, each on its own
# connection (billing/close_pg.py): the close is the database's work, one backend is one core.
TIERLAB_CLOSE_CONCURRENCY = env.int("TIERLAB_CLOSE_CONCURRENCY", default=2)
# A past-due subscription keeps API access this long, then gets `subscription_inactive`.
TIERLAB_PAST_DUE_GRACE_DAYS = env.int("TIERLAB_PAST_DUE_GRACE_DAYS", default=3)

# --- TierLab ----------------------------------------------------------------------------------------
# A beat older than this makes /healthz report the scheduler as stale (it stays 200: a stale beat
# does not stop the site from serving).
TIERLAB_HEARTBEAT_STALE_AFTER_SECONDS = env.int("TIERLAB_HEARTBEAT_STALE_AFTER_SECONDS", default=120)
# The model API's quota backend: "database" (embedded default: conditional UPDATEs in SQLite or
# PostgreSQL) or "redis" (production: one Lua script per check, usage events via a Redis stream).
TIERLAB_QUOTA_BACKEND = env.str("TIERLAB_QUOTA_BACKEND", default="redis" if PRODUCTION else "database")
CELERY_BEAT_SCHEDULE["usage-stream-drain"]["enabled"] = TIERLAB_QUOTA_BACKEND == "redis"
# How stale the model API's in-process view of keys and entitlements may be: a revoked key or a tier
# change takes effect within this many seconds on every web process.
TIERLAB_AUTH_CACHE_SECONDS = env.float("TIERLAB_AUTH_CACHE_SECONDS", default=3.0)
# How long a web process keeps a key, a team's entitlements and licence gate: every change to them is
# published by database triggers and polled by each process (core/invalidation.py), which drops the
# changed teams' entries within TIERLAB_AUTH_CACHE_SECONDS; this bounds only what no trigger sees.
TIERLAB_AUTH_CACHE_MAX_SECONDS = env.float("TIERLAB_AUTH_CACHE_MAX_SECONDS", default=600.0)
# PostgreSQL: the model API's few hot statements are prepared once per connection (core.sql.hot_cursor);
# off behind a pooler in transaction mode that does not keep prepared statements.
TIERLAB_PG_PREPARED_STATEMENTS = env.bool("TIERLAB_PG_PREPARED_STATEMENTS", default=True)
# How late a hosting partner may report a usage event: an event dated more than this many days before
# the partner's first share rate is refused by the ingest (POST /api/v1/partner/usage-events). Two
# months covers a partner that reports a month's backlog after month end; anything older is a wrong
# timestamp (e.g. "0001-01-01"), which would otherwise make the statement task issue a statement for
# every month since.
TIERLAB_PARTNER_EVENT_MAX_LATENESS_DAYS = env.int("TIERLAB_PARTNER_EVENT_MAX_LATENESS_DAYS", default=62)
# Required in production with the Redis quota backend (core/config_checks.py); no localhost fallback there.
REDIS_URL = env.str("REDIS_URL", default="" if PRODUCTION else "redis://127.0.0.1:6379/0")
# The Redis quota backend keeps answered usage in Redis until the drain stores it: production requires
# its append-only file with appendfsync everysec or always, checked at start (config/wsgi.py), by
# /healthz and by `check --deploy` (core/redis_persistence.py). Where CONFIG is disabled (managed Redis),
# the operator states the fsync policy they checked: TIERLAB_REDIS_APPENDFSYNC=everysec.
TIERLAB_REDIS_PERSISTENCE_REQUIRED = PRODUCTION
TIERLAB_REDIS_APPENDFSYNC = env.str("TIERLAB_REDIS_APPENDFSYNC", default="")
# /healthz answers 503 ("disk") when the folder of the embedded default's SQLite database or broker
# has less free space than this: SQLite and the broker fail on a full disk, usage cannot be recorded.
TIERLAB_HEALTHZ_MIN_FREE_DISK_MB = env.int("TIERLAB_HEALTHZ_MIN_FREE_DISK_MB", default=100)
# The Redis quota backend's socket timeouts (usage/quotas/redis.py). A script answers in well under a
# millisecond; past the read timeout the model API answers 503 quota_backend_unavailable, and a script
# Redis runs later than half of it does nothing (its caller has given up). No call is retried.
TIERLAB_REDIS_CONNECT_TIMEOUT_SECONDS = env.float("TIERLAB_REDIS_CONNECT_TIMEOUT_SECONDS", default=1.0)
TIERLAB_REDIS_READ_TIMEOUT_SECONDS = env.float("TIERLAB_REDIS_READ_TIMEOUT_SECONDS", default=1.0)
# A reservation (a streamed request, admitted and not settled yet) older than this was abandoned: its
# process crashed or lost its connection. The sweeper (beat, every 60 s) refunds it and frees its
# request id. Far longer than any request takes: a completion is computed before admission and a
# stream stops itself after half of this (usage/model_api.py), so only a dead process leaves one.
TIERLAB_RESERVATION_TIMEOUT_SECONDS = env.int("TIERLAB_RESERVATION_TIMEOUT_SECONDS", default=300)
# The playground streams an answer at about the pace a served model writes (usage/playground.py): this
# long between pieces of four tokens. The simulated model computes the whole answer at once; without
# a pace the page would show it in one step. 0 sends every piece at once.
TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS = env.float("TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS", default=0.03)
# How long a client's X-Request-Id stays bound to its recorded request (DESIGN.md "Request ids", like
# Stripe's idempotency keys): the same request is answered again, a different one refused with 409.
TIERLAB_REQUEST_ID_RETENTION_SECONDS = env.int("TIERLAB_REQUEST_ID_RETENTION_SECONDS", default=24 * 3600)
# Licensees whose products had more monthly active users than this in the calendar month before a
# model's release need a licence agreement for that model and later ones (the Llama licence's 700M).
TIERLAB_LICENSE_MAU_THRESHOLD = env.int("TIERLAB_LICENSE_MAU_THRESHOLD", default=700_000_000)
# Where people reach the site: the base of the absolute links in emails (invitations, billing, alerts),
# which are often sent by a worker with no request to take a host from. `make run` exports WEB_PORT to
# every process it starts; production defaults to https:// on the first ALLOWED_HOSTS name.
TIERLAB_SITE_URL = env.str(
    "TIERLAB_SITE_URL",
    default=(
        f"https://{ALLOWED_HOSTS[0]}"
        if PRODUCTION and ALLOWED_HOSTS
        else f"http://127.0.0.1:{env.int('WEB_PORT', default=8000)}"
    ),
)
TIERLAB_DEMO_OPERATOR_EMAIL = "operator@tierlab.localhost"
# Where the pricing page's "Talk to us" links go (custom limits, contracts): a mailto: to this address.
TIERLAB_SUPPORT_EMAIL = env.str("TIERLAB_SUPPORT_EMAIL", default="support@tierlab.localhost")
TIERLAB_DEMO_OPERATOR_PASSWORD = "tierlab-demo-operator"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The worker's "received" and "succeeded" lines for the tasks beat sends every few minutes or more often
    # (heartbeat, rollups, billing pass...) would be most of the console; failures are still logged.
    "filters": {"frequent_tasks": {"()": "core.logs.FrequentTaskLinesFilter"}},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
        "celery.app.trace": {"filters": ["frequent_tasks"]},
        "celery.worker.strategy": {"filters": ["frequent_tasks"]},
    },
}
# TIERLAB_LOG_EVERY_TASK=1 keeps every task's lines (tests that follow a real worker by its log do).
if env.bool("TIERLAB_LOG_EVERY_TASK", default=False):
    for _logger in ("celery.app.trace", "celery.worker.strategy"):
        LOGGING["loggers"].pop(_logger)
