"""Usage durability with the Redis quota backend (issue 12, item 1): production requires Redis's
append-only file with appendfsync everysec or always, refuses to start without it, /healthz reports it
(503 naming ``quota_backend`` where it is required) and ``check --deploy`` reports it as tierlab.E013.

Each case runs a private redis-server configured as the case needs (tests/faults/servers_ops.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.redis_persistence import redis_persistence_check
from tests.faults.servers_ops import AOF_EVERYSEC, NO_PERSISTENCE, redis_server
from tests.helpers_celery import closed_loopback_port

REPO = Path(__file__).resolve().parent.parent.parent
# A production configuration that passes every settings rule (tests/security/test_production_settings.py);
# only REDIS_URL is real here.
PRODUCTION_ENV = {
    "TIERLAB_PRODUCTION": "1",
    "SECRET_KEY": "x7Qp2mV9rT4kL8wZ1nB6cY3hF5jD0sG2aE9uI4oP7lK1zX3vN8mQ",
    "ALLOWED_HOSTS": "tierlab.example.com",
    "DATABASE_URL": "postgres://tierlab:secret@db.internal:5432/tierlab",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/1",
    "CACHE_URL": "redis://redis.internal:6379/2",
    "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
    "STRIPE_SECRET_KEY": "sk_test_51Hx9ExampleExampleExample",
    "STRIPE_WEBHOOK_SECRET": "whsec_Ex4mpleEx4mpleEx4mple",
    "STRIPE_PUBLISHABLE_KEY": "pk_test_51Hx9ExampleExampleExample",
    "STRIPE_API_BASE": "",
}


@pytest.fixture(scope="module")
def redis_aof(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("aof"), *AOF_EVERYSEC) as server:
        yield server


@pytest.fixture(scope="module")
def redis_volatile(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("volatile"), *NO_PERSISTENCE) as server:
        yield server


def test_aof_with_fsync_every_second_is_durable(redis_aof):
    state = redis_persistence_check(redis_aof.url)

    assert state.durable, state.problems
    assert (state.appendonly, state.appendfsync, state.source) == (True, "everysec", "CONFIG GET")
    assert "1 s" in state.report()["max_loss"]


def test_no_aof_is_refused(redis_volatile):
    state = redis_persistence_check(redis_volatile.url)

    assert not state.durable
    assert state.appendonly is False
    assert "appendonly no" in state.problems[0]
    assert state.report()["max_loss"] == "unbounded"


def test_aof_left_to_the_os_is_refused(tmp_path):
    with redis_server(tmp_path, "--appendonly", "yes", "--appendfsync", "no") as server:
        state = redis_persistence_check(server.url)

    assert state.problems == [state.problems[0]] and "appendfsync is 'no'" in state.problems[0]


def test_with_config_disabled_the_operator_states_the_fsync_policy(tmp_path):
    # Managed Redis services disable CONFIG: AOF is read from INFO, the fsync policy must be stated.
    with redis_server(tmp_path, *AOF_EVERYSEC, "--rename-command", "CONFIG", "") as server:
        unstated = redis_persistence_check(server.url)
        stated = redis_persistence_check(server.url, declared_appendfsync="everysec")
        wrong = redis_persistence_check(server.url, declared_appendfsync="no")

    assert unstated.source == "INFO persistence" and unstated.appendonly is True
    assert "TIERLAB_REDIS_APPENDFSYNC" in unstated.problems[0]
    assert stated.durable and stated.source == "INFO persistence + TIERLAB_REDIS_APPENDFSYNC"
    assert not wrong.durable


def test_with_config_disabled_and_no_aof_it_is_refused_whatever_is_stated(tmp_path):
    with redis_server(tmp_path, *NO_PERSISTENCE, "--rename-command", "CONFIG", "") as server:
        state = redis_persistence_check(server.url, declared_appendfsync="everysec")

    assert state.appendonly is False and "appendonly no" in state.problems[0]


# --- /healthz -----------------------------------------------------------------------------------------------


@pytest.fixture
def redis_quota_backend(settings):
    settings.TIERLAB_QUOTA_BACKEND = "redis"
    settings.TIERLAB_REDIS_PERSISTENCE_REQUIRED = True  # as in production
    return settings


@pytest.mark.django_db
def test_healthz_reports_durable_persistence(client, redis_quota_backend, redis_aof):
    redis_quota_backend.REDIS_URL = redis_aof.url

    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    check = response.json()["checks"]["quota_backend"]
    assert check["status"] == "ok"
    assert check["persistence"]["appendfsync"] == "everysec"


@pytest.mark.django_db
def test_healthz_is_503_naming_the_quota_backend_without_persistence(client, redis_quota_backend, redis_volatile):
    redis_quota_backend.REDIS_URL = redis_volatile.url

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["quota_backend"]
    assert "appendonly no" in body["checks"]["quota_backend"]["error"]


@pytest.mark.django_db
def test_healthz_reports_but_does_not_fail_where_persistence_is_not_required(
    client, redis_quota_backend, redis_volatile
):
    redis_quota_backend.REDIS_URL = redis_volatile.url
    redis_quota_backend.TIERLAB_REDIS_PERSISTENCE_REQUIRED = False  # the embedded default, developing

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["checks"]["quota_backend"]["persistence"]["problems"]


@pytest.mark.django_db
def test_healthz_is_503_naming_the_quota_backend_when_redis_is_down(client, redis_quota_backend):
    redis_quota_backend.REDIS_URL = f"redis://127.0.0.1:{closed_loopback_port()}/0"

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["quota_backend"]
    assert response.json()["checks"]["quota_backend"]["error"].startswith("ConnectionError")


# --- Production start and check --deploy ----------------------------------------------------------------------


def _run(code: str, redis_url: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}
    env.update(PRODUCTION_ENV, DJANGO_SETTINGS_MODULE="config.settings", REDIS_URL=redis_url)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


WSGI = "import config.wsgi"  # what gunicorn does first


def test_production_refuses_to_start_on_a_redis_without_persistence(redis_volatile):
    result = _run(WSGI, redis_volatile.url)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "refuses this configuration, 1 problem(s)" in result.stderr
    assert "REDIS_URL: the append-only file is off" in result.stderr


def test_production_starts_on_a_redis_with_aof_everysec(redis_aof):
    result = _run(WSGI, redis_aof.url)

    assert result.returncode == 0, result.stderr


def test_production_starts_when_redis_does_not_answer_yet_and_says_so():
    # Refusing would make every web node crash-loop through a Redis restart; /healthz answers 503
    # (quota_backend) until Redis answers and is durable.
    result = _run(WSGI, f"redis://127.0.0.1:{closed_loopback_port()}/0")

    assert result.returncode == 0, result.stderr
    assert "cannot check the quota backend's Redis persistence at start" in result.stderr


def test_check_deploy_reports_a_redis_without_persistence(redis_volatile, redis_aof):
    code = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', deploy=True)"
    )

    refused = _run(code, redis_volatile.url)
    accepted = _run(code, redis_aof.url)

    assert "tierlab.E013" in refused.stdout + refused.stderr
    assert "tierlab.E" not in accepted.stdout + accepted.stderr
