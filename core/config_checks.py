"""Production configuration checks: what ``TIERLAB_PRODUCTION=1`` refuses to start with.

Plain functions over a mapping of environment-variable names to raw string values, so settings can
call them before Django is set up (config/settings.py) and tests can call them directly. The same
rules run as ``manage.py check --deploy`` system checks (core/checks.py), over the effective settings.

No Django and no TierLab app is imported here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

# The embedded defaults (config/settings.py, published in the README): never valid in production.
EMBEDDED_SECRET_KEY = "tierlab-embedded-default-insecure-key-do-not-deploy"  # noqa: S105
EMBEDDED_STRIPE_SECRET_KEY = "sk_test_tierlab_localstripe"  # noqa: S105
EMBEDDED_STRIPE_WEBHOOK_SECRET = "whsec_tierlab_localstripe"  # noqa: S105

# Every variable production mode reads without a default (REDIS_URL only with the Redis quota backend).
REQUIRED = (
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CACHE_URL",
    "EMAIL_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
)
# Every variable the rules below look at: settings pass exactly these from os.environ.
CHECKED = (*REQUIRED, "DEBUG", "STRIPE_API_BASE", "TIERLAB_QUOTA_BACKEND", "REDIS_URL")

TRUE_STRINGS = frozenset({"1", "true", "yes", "y", "on", "ok"})
SQLITE_SCHEMES = frozenset({"sqlite", "spatialite"})
LOCAL_BROKER_SCHEMES = frozenset({"filesystem", "memory"})
LOCAL_CACHE_SCHEMES = {
    "dbcache": "the database cache",
    "locmemcache": "a per-process memory cache",
    "filecache": "a file cache",
    "dummycache": "no cache",
}
LOCAL_EMAIL_SCHEMES = frozenset({"consolemail", "filemail", "memorymail", "dummymail"})
QUOTA_BACKENDS = frozenset({"database", "redis"})

# Stable ids for the system checks: tierlab.E001 ... (core/checks.py).
CHECK_IDS = {
    "SECRET_KEY": "tierlab.E001",
    "DEBUG": "tierlab.E002",
    "ALLOWED_HOSTS": "tierlab.E003",
    "DATABASE_URL": "tierlab.E004",
    "CELERY_BROKER_URL": "tierlab.E005",
    "CACHE_URL": "tierlab.E006",
    "EMAIL_URL": "tierlab.E007",
    "STRIPE_SECRET_KEY": "tierlab.E008",
    "STRIPE_WEBHOOK_SECRET": "tierlab.E009",
    "STRIPE_API_BASE": "tierlab.E010",
    "REDIS_URL": "tierlab.E011",
    "TIERLAB_QUOTA_BACKEND": "tierlab.E012",
}


def production_problems(values: Mapping[str, str | None]) -> list[str]:
    """Every reason ``values`` (environment variable -> raw value) is not a safe production setup."""
    return [message for _, message in production_problems_by_variable(values)]


def production_problems_by_variable(values: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """Like ``production_problems``, each message with the variable it is about, in a stable order."""
    value = {name: (values.get(name) or "").strip() for name in CHECKED}
    problems: list[tuple[str, str]] = []

    def problem(name: str, message: str) -> None:
        problems.append((name, f"{name}: {message}"))

    missing = [name for name in REQUIRED if not value[name]]
    quota_backend = (value["TIERLAB_QUOTA_BACKEND"] or "redis").lower()
    if quota_backend == "redis" and not value["REDIS_URL"]:
        missing.append("REDIS_URL")
    for name in missing:
        problem(name, "not set (required in production)")

    if value["SECRET_KEY"] == EMBEDDED_SECRET_KEY:
        problem("SECRET_KEY", "is the embedded development key, which is public; set a long random key")
    if value["DEBUG"].lower() in TRUE_STRINGS:
        problem("DEBUG", "is on; debug pages leak settings and source (unset DEBUG or set DEBUG=0)")
    hosts = [host.strip() for host in value["ALLOWED_HOSTS"].split(",") if host.strip()]
    if any(host == "*" for host in hosts):
        problem("ALLOWED_HOSTS", "contains the wildcard '*'; list the host names served")
    if _scheme(value["DATABASE_URL"]) in SQLITE_SCHEMES:
        problem("DATABASE_URL", "is SQLite; use PostgreSQL (postgres://user:pass@host/tierlab)")
    broker = _scheme(value["CELERY_BROKER_URL"])
    if broker in LOCAL_BROKER_SCHEMES:
        problem("CELERY_BROKER_URL", f"is the local {broker}:// transport; use Redis or RabbitMQ")
    cache = _scheme(value["CACHE_URL"])
    if cache in LOCAL_CACHE_SCHEMES:
        problem("CACHE_URL", f"is {LOCAL_CACHE_SCHEMES[cache]} ({cache}://); use Redis (redis://...)")
    if _scheme(value["EMAIL_URL"]) in LOCAL_EMAIL_SCHEMES:
        problem("EMAIL_URL", "does not send mail; use SMTP (smtp+tls://user:pass@host:587)")
    if value["STRIPE_SECRET_KEY"] == EMBEDDED_STRIPE_SECRET_KEY or "localstripe" in value["STRIPE_SECRET_KEY"]:
        problem("STRIPE_SECRET_KEY", "is the localstripe key from the README; use a Stripe key")
    webhook_secret = value["STRIPE_WEBHOOK_SECRET"]
    if webhook_secret == EMBEDDED_STRIPE_WEBHOOK_SECRET or "localstripe" in webhook_secret:
        problem("STRIPE_WEBHOOK_SECRET", "is the localstripe secret from the README; use the endpoint's secret")
    if value["STRIPE_API_BASE"] and not _is_public_https(value["STRIPE_API_BASE"]):
        problem("STRIPE_API_BASE", "points at localstripe or a local address; leave it empty for Stripe")
    if quota_backend not in QUOTA_BACKENDS:
        problem("TIERLAB_QUOTA_BACKEND", f"is {quota_backend!r}; use 'redis' or 'database'")
    elif quota_backend == "redis" and value["REDIS_URL"] and _scheme(value["REDIS_URL"]) not in ("redis", "rediss"):
        problem("REDIS_URL", "is not a redis:// or rediss:// URL")
    return problems


def problems_message(problems: list[str]) -> str:
    """The one message production mode refuses to start with: every problem, one bullet each."""
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return (
        f"TierLab production mode (TIERLAB_PRODUCTION=1) refuses this configuration, "
        f"{len(problems)} problem(s):\n{lines}\nSee README.md, 'Production checklist'."
    )


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _is_public_https(url: str) -> bool:
    """True for an https URL whose host is not localstripe, localhost or a loopback/private address."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme != "https" or not host or "localstripe" in host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return not (address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local)
