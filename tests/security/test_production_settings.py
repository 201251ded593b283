"""Production mode refuses unsafe configuration; demo account, enumeration, CSP and HSTS (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse

from core.config_checks import REQUIRED, production_problems
from tiers import services as tier_services

REPO = Path(__file__).resolve().parent.parent.parent
DEMO_EMAIL = "operator@tierlab.localhost"
DEMO_PASSWORD = "tierlab-demo-operator"

GOOD = {
    "SECRET_KEY": "x7Qp2mV9rT4kL8wZ1nB6cY3hF5jD0sG2aE9uI4oP7lK1zX3vN8mQ",
    "ALLOWED_HOSTS": "tierlab.example.com",
    "DATABASE_URL": "postgres://tierlab:secret@db.internal:5432/tierlab",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/1",
    "CACHE_URL": "redis://redis.internal:6379/2",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
    "STRIPE_SECRET_KEY": "sk_test_51Hx9ExampleExampleExample",
    "STRIPE_WEBHOOK_SECRET": "whsec_Ex4mpleEx4mpleEx4mple",
    "STRIPE_PUBLISHABLE_KEY": "pk_test_51Hx9ExampleExampleExample",
    "STRIPE_API_BASE": "",
}

UNSAFE = [
    ("SECRET_KEY", "tierlab-embedded-default-insecure-key-do-not-deploy", "embedded development key"),
    ("DEBUG", "1", "DEBUG: is on"),
    ("ALLOWED_HOSTS", "*", "wildcard"),
    ("ALLOWED_HOSTS", "tierlab.example.com,*", "wildcard"),
    ("DATABASE_URL", "sqlite:////srv/tierlab/var/db.sqlite3", "is SQLite"),
    ("CELERY_BROKER_URL", "filesystem://", "filesystem://"),
    ("CACHE_URL", "dbcache://tierlab_cache", "database cache"),
    ("STRIPE_SECRET_KEY", "sk_test_tierlab_localstripe", "localstripe key"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_tierlab_localstripe", "localstripe secret"),
    ("STRIPE_API_BASE", "http://127.0.0.1:8420", "STRIPE_API_BASE"),
    ("STRIPE_API_BASE", "https://localhost:8420", "STRIPE_API_BASE"),
    ("STRIPE_API_BASE", "http://localstripe:8420", "STRIPE_API_BASE"),
]


def _run(env_vars: dict[str, str], code: str = "import django; django.setup()") -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "TIERLAB_PRODUCTION": "1", **env_vars})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("django.core.exceptions.Improperly")]
    assert len(lines) == 1, result.stderr
    return result.stderr[result.stderr.index(lines[0]) :]


# --- The checking function ---------------------------------------------------------------------------


def test_a_good_configuration_has_no_problems():
    assert production_problems(GOOD) == []
    assert production_problems({**GOOD, "STRIPE_API_BASE": "https://stripe-proxy.example.com"}) == []
    assert production_problems({**GOOD, "TIERLAB_QUOTA_BACKEND": "database", "REDIS_URL": ""}) == []


def test_everything_missing_lists_every_required_variable_once():
    problems = production_problems({})
    named = [problem.split(":", 1)[0] for problem in problems]
    assert named == [*REQUIRED, "REDIS_URL"]


@pytest.mark.parametrize(("name", "value", "expected"), UNSAFE)
def test_each_unsafe_value_is_a_problem(name, value, expected):
    problems = production_problems({**GOOD, name: value})
    assert len(problems) == 1 and problems[0].startswith(f"{name}:") and expected in problems[0]


def test_redis_url_is_required_only_with_the_redis_quota_backend():
    without = {**GOOD, "REDIS_URL": ""}
    assert production_problems(without) == ["REDIS_URL: not set (required in production)"]
    assert production_problems({**without, "TIERLAB_QUOTA_BACKEND": "redis"}) != []
    assert production_problems({**without, "TIERLAB_QUOTA_BACKEND": "database"}) == []


def test_several_problems_are_all_reported():
    problems = production_problems({**GOOD, "DEBUG": "true", "ALLOWED_HOSTS": "*", "CACHE_URL": ""})
    assert [problem.split(":", 1)[0] for problem in problems] == ["CACHE_URL", "DEBUG", "ALLOWED_HOSTS"]


# --- Settings import in production mode (subprocess) -------------------------------------------------


def test_production_with_nothing_set_refuses_once_naming_every_variable():
    message = _refusal(_run({}))
    for name in (*REQUIRED, "REDIS_URL"):
        assert f"- {name}: not set" in message
    # One short message, not one traceback per variable.
    assert len(message.splitlines()) <= len(REQUIRED) + 4


def test_production_refuses_all_unsafe_values_in_one_message():
    unsafe = {name: value for name, value, _ in UNSAFE}
    message = _refusal(_run({**GOOD, **unsafe}))
    for name in unsafe:
        assert f"  - {name}:" in message
    assert message.count("  - ") == len(unsafe)


@pytest.mark.parametrize(("name", "value", "expected"), UNSAFE)
def test_production_refuses_each_unsafe_value(name, value, expected):
    message = _refusal(_run({**GOOD, name: value}))
    assert f"- {name}:" in message and expected in message
    assert message.count("  - ") == 1


def test_production_accepts_a_good_configuration():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_SECONDS > 0, s.REDIS_URL, "
        "s.DATABASES['default']['ENGINE'], s.DATABASES['default']['CONN_HEALTH_CHECKS'])"
    )
    result = _run(GOOD, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "True",
        "True",
        GOOD["REDIS_URL"],
        "core.db.postgresql",  # Django's engine with a health check that polls the socket first
        "True",
    ]


@pytest.mark.parametrize(
    ("value", "engine"), [("socket", "core.db.postgresql"), ("query", "django.db.backends.postgresql")]
)
def test_conn_health_check_chooses_the_postgresql_engine(value, engine):
    code = (
        "import django; django.setup(); from django.conf import settings as s; from django.db import connection; "
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['CONN_HEALTH_CHECKS'], connection.vendor)"
    )
    result = _run({**GOOD, "CONN_HEALTH_CHECK": value}, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [engine, "True", "postgresql"]


def test_an_unknown_conn_health_check_is_refused():
    message = _refusal(_run({**GOOD, "CONN_HEALTH_CHECK": "ping"}))
    assert "CONN_HEALTH_CHECK must be 'socket' or 'query', not 'ping'" in message


def test_check_deploy_reports_the_embedded_defaults_as_errors():
    env = {"TIERLAB_PRODUCTION": "0"}
    code = (
        "import sys, django; django.setup(); from django.core.management import call_command; "
        "call_command('check', deploy=True, fail_level='CRITICAL')"
    )
    result = _run(env, code)
    assert result.returncode == 0, result.stderr
    for check_id in ("E001", "E002", "E004", "E005", "E006", "E008", "E009", "E010"):
        assert f"tierlab.{check_id}" in result.stdout + result.stderr


def test_check_deploy_has_no_tierlab_errors_for_a_good_configuration():
    code = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', deploy=True)"
    )
    result = _run(GOOD, code)
    assert "tierlab.E" not in result.stdout + result.stderr


# --- The demo account --------------------------------------------------------------------------------


@pytest.fixture
def demo_operator(free_tier):
    user, _ = tier_services.operator_ensure(email=DEMO_EMAIL, password=DEMO_PASSWORD)
    return user


@override_settings(PRODUCTION=True)
def test_seed_demo_refuses_in_production(db):
    with pytest.raises(CommandError, match="production"):
        call_command("seed_demo")


def test_demo_operator_logs_in_in_the_embedded_default(demo_operator):
    assert authenticate(None, username=DEMO_EMAIL, password=DEMO_PASSWORD) == demo_operator


@override_settings(PRODUCTION=True)
def test_demo_operator_cannot_log_in_in_production(client, demo_operator):
    assert authenticate(None, username=DEMO_EMAIL, password=DEMO_PASSWORD) is None
    assert authenticate(None, email=DEMO_EMAIL.upper(), password=DEMO_PASSWORD) is None
    # The admin login (ModelBackend) ...
    response = client.post(reverse("admin:login"), {"username": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    # ... and allauth's.
    response = client.post(reverse("account_login"), {"login": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302


def test_an_existing_demo_session_ends_in_production(client, demo_operator):
    client.force_login(demo_operator)
    assert client.get(reverse("admin:index")).status_code == 200
    with override_settings(PRODUCTION=True):
        assert client.get(reverse("admin:index")).status_code == 302


@override_settings(PRODUCTION=True)
def test_other_operators_still_log_in_in_production(client, free_tier):
    tier_services.operator_ensure(email="ops@example.com", password=DEMO_PASSWORD)
    client.post(reverse("admin:login"), {"username": "ops@example.com", "password": DEMO_PASSWORD})
    assert client.get(reverse("admin:index")).status_code == 200


# --- Enumeration, CSP, HSTS --------------------------------------------------------------------------


def _reset_page(client, email: str) -> str:
    response = client.post(reverse("account_reset_password"), {"email": email}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def test_password_reset_says_the_same_for_known_and_unknown_emails(client, demo_operator):
    known = _reset_page(client, DEMO_EMAIL)
    unknown = _reset_page(client, "nobody@example.com")
    assert "not assigned" not in known + unknown
    assert known.replace(DEMO_EMAIL, "EMAIL") == unknown.replace("nobody@example.com", "EMAIL")
    # Only the known address gets a reset link.
    assert [message.to for message in mail.outbox if "password" in message.subject.lower()][:1] == [[DEMO_EMAIL]]


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/admin/login/", "/api/docs/"])
def test_pages_send_a_content_security_policy(client, db, path):
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["font-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "http" not in policy
    # No inline scripts anywhere, Swagger UI included (its start-up script is served as a file).
    assert "'unsafe-inline'" not in directives["script-src"]


@override_settings(SECURE_HSTS_SECONDS=3600, SECURE_HSTS_INCLUDE_SUBDOMAINS=True, SECURE_SSL_REDIRECT=False)
def test_hsts_header_names_subdomains(client, db):
    response = client.get("/", secure=True)
    assert response["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
