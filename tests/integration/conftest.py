"""The integration group runs against the real servers .ci/run starts: refuse to pass on anything else.

Each module here is marked ``integration`` (tests/conftest.py skips the group unless
TIERLAB_INTEGRATION=1). When the group does run, a test fails at once if the settings do not point at
PostgreSQL and Redis: a green integration run on SQLite would prove nothing.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection

from tests.helpers_celery import broker_scheme


@pytest.fixture(autouse=True)
def _real_servers():
    engine = settings.DATABASES["default"]["ENGINE"]
    if connection.vendor != "postgresql":  # Django's engine or ours (core.db.postgresql)
        pytest.fail(f"integration tests need PostgreSQL (DATABASE_URL=postgres://...), not {engine}", pytrace=False)
    if broker_scheme() != "redis":
        pytest.fail(
            f"integration tests need Redis as the broker (CELERY_BROKER_URL=redis://...), not {broker_scheme()}://",
            pytrace=False,
        )
