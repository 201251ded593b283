"""Settings for the test suite: the embedded defaults, made fast and quiet.

The database and broker still come from the environment, so CI's integration run points the same
suite at PostgreSQL and Redis (DATABASE_URL, CELERY_BROKER_URL, CACHE_URL).
"""

import os
from pathlib import Path

os.environ.setdefault("CELERY_BROKER_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test-celery"))

from config.settings import *  # noqa: F403
from config.settings import DATABASES, LOGGING, VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
if not os.environ.get("CACHE_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# A file, not :memory:, so processes a test starts (Celery worker, beat) see the test database; one
# file per pytest process (kept in the environment, so processes it starts inherit the name), so
# test runs side by side do not share a database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _test_db = os.environ.setdefault("TIERLAB_TEST_DB", str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3"))
    DATABASES["default"]["TEST"] = {"NAME": _test_db}
DEBUG = False
LOGGING["root"]["level"] = "WARNING"
# WhiteNoise warns when STATIC_ROOT is missing; tests serve static files through the finders.
(VAR_DIR / "static").mkdir(parents=True, exist_ok=True)
# No persistent connections in tests: live-server threads must not hold connections that keep
# PostgreSQL from dropping the test database at the end.
DATABASES["default"]["CONN_MAX_AGE"] = 0
