"""Quota enforcement for the model API: the interface in ``base``, a backend chosen by a setting.

``settings.TIERLAB_QUOTA_BACKEND``: ``"database"`` (``DatabaseQuotaBackend``, the embedded default) or
``"redis"`` (``RedisQuotaBackend`` on ``settings.REDIS_URL``). Backends are imported when first asked
for, so importing the value objects in ``base`` never pulls in Django models or redis-py.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from usage.quotas.base import QuotaBackend

_backend: QuotaBackend | None = None
_lock = threading.Lock()


def _backend_build(name: str) -> QuotaBackend:
    if name == "database":
        from usage.quotas.database import DatabaseQuotaBackend

        return DatabaseQuotaBackend()
    if name == "redis":
        from usage.quotas.redis import RedisQuotaBackend

        return RedisQuotaBackend(url=settings.REDIS_URL)
    raise ImproperlyConfigured(f'TIERLAB_QUOTA_BACKEND must be "database" or "redis", not {name!r}')


def get_quota_backend() -> QuotaBackend:
    """The configured backend: one instance per process (the Redis one holds the connection pool)."""
    global _backend
    backend = _backend
    if backend is None:
        with _lock:
            if _backend is None:
                _backend = _backend_build(settings.TIERLAB_QUOTA_BACKEND)
            backend = _backend
    return backend


def reset_quota_backend_cache() -> None:
    """Forget the instance (tests that change the settings); the next call builds a new one."""
    global _backend
    with _lock:
        backend, _backend = _backend, None
    close = getattr(backend, "close", None)
    if close is not None:
        close()
