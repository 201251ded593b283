"""System checks: the production configuration rules (core/config_checks.py) over the effective settings.

Registered with the ``deploy`` tag (core/apps.py), so ``manage.py check --deploy`` reports every unsafe
value as an error ``tierlab.E0xx``, in any mode. Production mode already refuses these at settings
import; the checks let an operator vet a configuration before switching it on.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks

from core.config_checks import CHECK_IDS, production_problems_by_variable

# Backend class name -> the django-environ URL scheme it comes from, for the cache rules.
_CACHE_SCHEMES = {
    "DatabaseCache": "dbcache",
    "LocMemCache": "locmemcache",
    "FileBasedCache": "filecache",
    "DummyCache": "dummycache",
}
_EMAIL_SCHEMES = {
    "console": "consolemail",
    "filebased": "filemail",
    "locmem": "memorymail",
    "dummy": "dummymail",
}


def settings_values() -> dict[str, str]:
    """The effective settings, written as the environment variables the rules read."""
    engine = settings.DATABASES["default"]["ENGINE"]
    database = "sqlite" if engine.endswith("sqlite3") else engine.rsplit(".", 1)[-1]
    cache_backend = settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]
    email_module = settings.EMAIL_BACKEND.rsplit(".", 2)[-2]
    return {
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "1" if settings.DEBUG else "0",
        "ALLOWED_HOSTS": ",".join(settings.ALLOWED_HOSTS),
        "DATABASE_URL": f"{database}://",
        "CELERY_BROKER_URL": getattr(settings, "CELERY_BROKER_URL", "") or "",
        "CACHE_URL": f"{_CACHE_SCHEMES.get(cache_backend, cache_backend.lower())}://",
        "EMAIL_URL": f"{_EMAIL_SCHEMES.get(email_module, email_module)}://",
        "STRIPE_SECRET_KEY": getattr(settings, "STRIPE_SECRET_KEY", "") or "",
        "STRIPE_WEBHOOK_SECRET": getattr(settings, "STRIPE_WEBHOOK_SECRET", "") or "",
        "STRIPE_API_BASE": getattr(settings, "STRIPE_API_BASE", "") or "",
        "TIERLAB_QUOTA_BACKEND": getattr(settings, "TIERLAB_QUOTA_BACKEND", "") or "",
        "REDIS_URL": getattr(settings, "REDIS_URL", "") or "",
    }


def production_settings_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    return [
        checks.Error(message, hint="See README.md, 'Production checklist'.", id=CHECK_IDS[name])
        for name, message in production_problems_by_variable(settings_values())
    ]


def redis_persistence_deploy_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """tierlab.E013: the Redis quota backend's Redis has no durable persistence (core/redis_persistence.py);
    tierlab.W013 when it cannot be asked (unreachable from where the check runs)."""
    import redis

    from core.redis_persistence import quota_redis_persistence

    hint = "See README.md, 'Production checklist' (Redis persistence)."
    try:
        state = quota_redis_persistence()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        return [checks.Warning(f"REDIS_URL: cannot check Redis persistence: {error}", hint=hint, id="tierlab.W013")]
    if state is None:
        return []
    return [checks.Error(f"REDIS_URL: {problem}", hint=hint, id="tierlab.E013") for problem in state.problems]
