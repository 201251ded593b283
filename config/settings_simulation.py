"""Settings of a simulation run's own process (simulation/runner.py starts it; nothing else should).

The platform's settings, with the run's own database instead of the platform's: the process refuses to
start without ``TIERLAB_SIMULATION_DATABASE_URL`` (a fresh SQLite file, or a PostgreSQL database named
for the run), so it can never write to the platform's data. Also: a cache of its own (in memory), no
email sent (the services still render what they would send), the database quota backend, quiet logs.
"""

import os

import environ
from django.core.exceptions import ImproperlyConfigured

from config.settings import *  # noqa: F403
from config.settings import LOGGING

_url = os.environ.get("TIERLAB_SIMULATION_DATABASE_URL", "")
if not _url:
    raise ImproperlyConfigured("config.settings_simulation runs only with TIERLAB_SIMULATION_DATABASE_URL set.")
DATABASES = {"default": environ.Env.db_url_config(_url)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A scratch file that one process writes: durability buys nothing (a crashed run is run again), and
    # the journal in memory leaves no -wal file beside it (runner.py copies the file as it stands). A
    # page cache of up to 256 MB instead of SQLite's 2 MB: a year of 10,000 teams' usage records and
    # invoices is a few hundred MB, whose indexes a day's inserts touch all over; temporary tables in memory.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;"
        " PRAGMA temp_store=MEMORY;"
    }
DATABASES["default"]["CONN_MAX_AGE"] = None
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
CELERY_TASK_ALWAYS_EAGER = True
TIERLAB_QUOTA_BACKEND = "database"
LOGGING["root"]["level"] = "WARNING"
# Not DEBUG: Django would keep every query of a year-long run in memory (connection.queries).
DEBUG = False
