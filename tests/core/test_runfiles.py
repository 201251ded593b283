"""Where a command finds what `make run` started (issue 16, finding 15), and what `make run` says it started."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from core.runfiles import localstripe_url, url_file_remove, url_file_write

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def test_a_command_in_another_shell_finds_the_published_localstripe(tmp_path, monkeypatch):
    url_file = tmp_path / "run" / "localstripe.url"
    monkeypatch.delenv("LOCALSTRIPE_PORT", raising=False)
    assert localstripe_url(url_file, 8420) == "http://127.0.0.1:8420"  # nothing published: the default

    url_file_write(url_file, "http://127.0.0.1:8431")
    assert localstripe_url(url_file, 8420) == "http://127.0.0.1:8431"

    monkeypatch.setenv("LOCALSTRIPE_PORT", "8500")  # make run's own processes are told the port
    assert localstripe_url(url_file, 8500) == "http://127.0.0.1:8500"


@pytest.mark.parametrize("content", ["https://api.stripe.com", "http://10.0.0.1:8420", "http://127.0.0.1:99999", ""])
def test_only_a_loopback_url_is_taken_from_the_file(tmp_path, monkeypatch, content):
    monkeypatch.delenv("LOCALSTRIPE_PORT", raising=False)
    url_file = tmp_path / "localstripe.url"
    url_file.write_text(content)
    assert localstripe_url(url_file, 8420) == "http://127.0.0.1:8420"


def test_the_url_is_withdrawn_only_by_the_localstripe_that_published_it(tmp_path):
    url_file = tmp_path / "localstripe.url"
    url_file_write(url_file, "http://127.0.0.1:8431")
    url_file_remove(url_file, "http://127.0.0.1:9999")  # another one, stopping later: leaves it
    assert url_file.read_text().strip() == "http://127.0.0.1:8431"
    url_file_remove(url_file, "http://127.0.0.1:8431")
    assert not url_file.exists()


def _setting(name: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "LOCALSTRIPE_", "TIERLAB_"))}
    environment.update(DJANGO_SETTINGS_MODULE="config.settings", **env)
    code = f"from django.conf import settings; print(settings.{name})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=environment, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_make_run_starts_localstripe_unless_stripe_api_base_is_given(tmp_path):
    var = str(tmp_path / "var")
    assert _setting("TIERLAB_RUN_STARTS_LOCALSTRIPE", TIERLAB_VAR_DIR=var) == "True"
    # The environment switch to Stripe's real test mode: STRIPE_API_BASE empty (Stripe itself).
    assert _setting("TIERLAB_RUN_STARTS_LOCALSTRIPE", TIERLAB_VAR_DIR=var, STRIPE_API_BASE="") == "False"
    assert _setting("STRIPE_API_BASE", TIERLAB_VAR_DIR=var, STRIPE_API_BASE="") == ""


def test_the_banner_names_localstripe_the_api_docs_and_keys_and_where_emails_go(settings):
    settings.TIERLAB_RUN_STARTS_LOCALSTRIPE = True
    settings.STRIPE_API_BASE = "http://127.0.0.1:8431"
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    out = io.StringIO()
    call_command("tierlab_banner", port=8080, stdout=out)
    banner = out.getvalue()
    for expected in ("http://127.0.0.1:8080/keys/", "http://127.0.0.1:8080/api/docs/", "emails are printed below"):
        assert expected in banner
    assert "localstripe  http://127.0.0.1:8431" in banner


def test_a_production_banner_has_no_localstripe_no_printed_emails_and_no_demo_login(settings):
    settings.PRODUCTION = True
    settings.TIERLAB_RUN_STARTS_LOCALSTRIPE = False
    settings.STRIPE_API_BASE = ""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    out = io.StringIO()
    call_command("tierlab_banner", port=8080, stdout=out)
    banner = out.getvalue()
    assert "localstripe" not in banner and "printed below" not in banner and "Demo operator" not in banner
    assert "http://127.0.0.1:8080/api/docs/" in banner and "api.stripe.com" in banner
