"""Issue 11: schema fuzzing of every JSON API with schemathesis (a pinned test dependency).

A live server (pytest-django's, on the test database: SQLite, or PostgreSQL in CI's integration run)
with a seeded team on the Enterprise tier, an API key with every scope and a hosting partner's key;
``st run`` reads /api/schema/ — the account API, the model API (/v1, /compat/v1) and the partner API —
and sends, per operation, a bounded number of generated requests, valid and invalid, with every check
(schemathesis's default): no 5xx, every status, content type, header and body as the schema documents,
valid data accepted, invalid data refused, authentication not ignored. The run's counts are printed;
the test fails on any failure or error.

``TIERLAB_FUZZ_EXAMPLES`` (default 25) sets the examples per operation, ``TIERLAB_FUZZ_SEED`` the seed
(default fixed, so CI is reproducible; any other seed explores other inputs), and
``TIERLAB_FUZZ_PATHS`` (a regular expression, default all) the paths fuzzed, e.g. ``^/(compat/)?v1/``
for the model API alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import ApiKey
from accounts.selectors import team_for_user
from accounts.services import api_key_create
from partners.services import partner_create
from tiers import services as tier_services

EXAMPLES = int(os.environ.get("TIERLAB_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("TIERLAB_FUZZ_SEED", "20261204"))
PATHS = os.environ.get("TIERLAB_FUZZ_PATHS", "")
ALL_SCOPES = [scope.value for scope in ApiKey.Scope]

CONFIG = """
[auth.openapi.ApiKey]
bearer = "${{TIERLAB_FUZZ_API_KEY}}"

[auth.openapi.PartnerKey]
bearer = "${{TIERLAB_FUZZ_PARTNER_KEY}}"

[generation]
# TierLab refuses NUL in any JSON string or key with a 400 naming it (no database stores it faithfully;
# tests/security/test_bounded_input.py covers it). A schema cannot say so of property names, so the
# generator leaves NUL out.
allow-x00 = false

# The key the fuzzer may fetch and revoke is a spare one, not the key it authenticates with.
[[operations]]
include-path = "/api/v1/keys/{{key_id}}"
parameters = {{ "key_id" = {spare_key_id} }}

# DELETE revokes a key or an invitation, which stays readable as revoked (its status says so; the keys
# page lists revoked keys too): "deleted resource still available" (use_after_free) does not apply to
# reading it. Every other check still does.
[[operations]]
include-path = ["/api/v1/keys/{{key_id}}", "/api/v1/team/invitations/{{invitation_id}}"]
include-method = "GET"
checks.use_after_free.enabled = false

# Rules a schema cannot state, refused with a 400 and a code of their own: what is valid depends on the
# account's state, the clock or several fields at once (exactly one of tier/cancel/resume; nothing to
# resume; a spend cap below the tier fee; an expiry in the past; a month that has not started; start
# before end and within the range a granularity allows), or with a 409 for a state conflict (the last
# owner; an address that is a member or has a pending invitation; an invitation accepted already).
# Every other check still applies to them.
[[operations]]
include-path = [
  "/api/v1/subscription",
  "/api/v1/subscription/spend-cap",
  "/api/v1/keys",
  "/api/v1/mau",
  "/api/v1/usage",
  "/api/v1/team/members/{{member_id}}",
  "/api/v1/team/invitations",
  "/api/v1/team/invitations/{{invitation_id}}",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# The chat completions (issue 15): a JSON Schema in `response_format` or a tool's `parameters` is an
# open object to OpenAPI, but the model must be able to write an instance of it, so a keyword outside
# the supported subset or a schema nothing satisfies (minimum above maximum, an empty enum) is a 400
# naming it; so are the cross-field rules (`tool_choice` naming a function not in `tools`, two tools of
# one name, `top_logprobs` without `logprobs`). Every other check still applies to them.
[[operations]]
include-path = ["/v1/chat/completions", "/compat/v1/chat/completions"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def st_binary() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: it is pinned in requirements.txt (make .venv/.installed)")
    return found


@pytest.fixture
def fuzz_account(transactional_db, catalog, settings, stripe_local):
    # Abuse throttling is tested in test_scopes.py; here it would turn generated requests into 429s.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {name: "100000/min" for name in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]},
    }
    user = tier_services.user_create(email="fuzz@example.com", tier_slug="enterprise")
    team = team_for_user(user=user)
    _, secret = api_key_create(team=team, name="fuzzer", scopes=ALL_SCOPES)
    spare, _ = api_key_create(team=team, name="spare", scopes=["read"])
    _, partner_secret = partner_create(
        slug="fuzz-cloud", name="Fuzz Cloud", share_bps=1500, contact_email="partners@fuzz.example"
    )
    return {"api_key": secret, "spare_key_id": spare.pk, "partner_key": partner_secret}


def test_every_api_survives_schema_fuzzing(live_server, fuzz_account, tmp_path, report):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(spare_key_id=fuzz_account["spare_key_id"]))
    report_path = tmp_path / "report.json"
    env = {
        **os.environ,
        "TIERLAB_FUZZ_API_KEY": fuzz_account["api_key"],
        "TIERLAB_FUZZ_PARTNER_KEY": fuzz_account["partner_key"],
        "NO_COLOR": "1",
    }
    command = [
        st_binary(),
        "--config-file",
        str(config),
        "run",
        f"{live_server.url}/api/schema/",
        # No --checks: every check is on by default, and a CLI --checks would override the
        # per-operation exception in CONFIG (the CLI outranks the config file).
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--no-color",
        *(["--include-path-regex", PATHS] if PATHS else []),
    ]
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    output = completed.stdout + completed.stderr
    summary = _summary(output)
    report(f"\nschemathesis {EXAMPLES} examples/operation, seed {SEED}: " + "; ".join(summary))
    assert completed.returncode == 0, f"schemathesis found failures (exit {completed.returncode}):\n{output[-30000:]}"
    assert report_path.exists()


def _summary(output: str) -> list[str]:
    """The run's counts as st prints them: operations, phases, test cases, failures."""
    wanted = ("Selected:", "Tested:", "generated", "Examples", "Coverage", "Fuzzing", "Stateful", "passed", "failures")
    return [line.strip() for line in output.splitlines() if any(word in line for word in wanted)][-12:]
