"""The README's examples run as written (issue 16, finding 15).

Every ```sh and ```python block of README.md is run, in the README's order, against a live `make run`
(tests/make_run.py: on free ports, its state in a temp folder), from the project folder, as a person
would in a second shell: no LOCALSTRIPE_PORT (the localstripe is on a free, non-default port, found
through var/run/localstripe.url), only the variables earlier blocks exported. The one change made to
the text is the address: http://127.0.0.1:8000 becomes the live server's. A block is skipped only when
the line before it says why (``<!-- not run by tests/test_readme_examples.py: <reason> -->``).

Each block must exit 0 and print no error in the APIs' shape; a ``# {...}`` comment after a command is
the JSON it must print. The partner example must put a non-zero share on the partner's statement.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.make_run import MakeRun, embedded_default_environment

pytestmark = pytest.mark.make_run

BASE_DIR = Path(__file__).resolve().parent.parent
README = BASE_DIR / "README.md"
SKIP_NOTE = re.compile(r"<!-- not run by tests/test_readme_examples\.py: (?P<reason>.+?) -->")
FENCE = re.compile(r"^```(?P<lang>sh|python)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT_SECONDS = 120


@dataclass
class Example:
    lang: str
    body: str
    line: int
    skip_reason: str | None


def readme_examples() -> list[Example]:
    text = README.read_text()
    examples = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        note = SKIP_NOTE.fullmatch(before.strip())
        line = text.count("\n", 0, match.start()) + 1
        examples.append(Example(match["lang"], match["body"], line, note["reason"] if note else None))
    return examples


def test_the_readme_has_examples_to_run_and_says_why_it_skips_the_others():
    examples = readme_examples()
    assert sum(example.skip_reason is None for example in examples) >= 4
    assert all(example.skip_reason.strip() for example in examples if example.skip_reason is not None)


@pytest.fixture(scope="module")
def live_make_run(tmp_path_factory):
    run = MakeRun(var_dir=tmp_path_factory.mktemp("readme") / "var")
    run.start()
    try:
        run.wait_ready()
        yield run
    finally:
        run.interrupt(wait_seconds=15)
        run.stop()


def _run(example: Example, env: dict[str, str], base_url: str, env_file: Path) -> subprocess.CompletedProcess:
    body = example.body.replace("http://127.0.0.1:8000", base_url)
    if example.lang == "sh":
        script = f"set -euo pipefail\n{body}\nenv -0 > {env_file}\n"
        command = ["bash", "-c", script]
    else:
        command = [str(BASE_DIR / ".venv/bin/python"), "-c", body]
    return subprocess.run(command, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_SECONDS)


def json_objects(text: str) -> list[dict]:
    """The JSON objects in ``text`` (curl prints its answers back to back, without a newline)."""
    decoder, objects, position = json.JSONDecoder(), [], text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            end = position + 1
        else:
            if isinstance(value, dict):
                objects.append(value)
        position = text.find("{", end)
    return objects


def _expected_json_outputs(body: str) -> list[dict]:
    return [json.loads(line[2:]) for line in body.splitlines() if line.startswith("# {")]


def test_every_readme_example_runs_as_written(live_make_run, tmp_path):
    env = embedded_default_environment(live_make_run.var_dir)
    env_file = tmp_path / "env"
    ran = []
    for example in readme_examples():
        if example.skip_reason is not None:
            continue
        result = _run(example, env, live_make_run.base_url, env_file)
        where = (
            f"README.md line {example.line} ({example.lang}):\n{example.body}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        assert result.returncode == 0, where
        assert result.stdout.strip(), where
        printed = json_objects(result.stdout)
        assert not [answer for answer in printed if "error" in answer], where
        for expected in _expected_json_outputs(example.body):
            assert expected in printed, where
        if example.lang == "sh":  # what it exported is there for the next blocks, as in one shell
            env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        ran.append(example.line)
    assert len(ran) >= 4, ran

    # The partner example's November event is on the November statement with the 15% share.
    statement = subprocess.run(
        [str(BASE_DIR / ".venv/bin/python"), "manage.py", "shell", "-c", STATEMENT_SHARE],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    assert statement.returncode == 0, statement.stderr
    assert json.loads(statement.stdout.strip().splitlines()[-1]) == {"revenue_cents": 42, "share_cents": 6}


STATEMENT_SHARE = """
import json
from datetime import date
from partners.models import PartnerStatement
from partners.statements import partner_statements_issue
partner_statements_issue()
lines = PartnerStatement.objects.get(partner__slug="aws", month=date(2026, 11, 1)).lines.all()
revenue, share = sum(l.revenue_cents for l in lines), sum(l.share_cents for l in lines)
print(json.dumps({"revenue_cents": revenue, "share_cents": share}))
"""
