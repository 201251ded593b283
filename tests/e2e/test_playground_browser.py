"""The playground in a real browser (issue 15): a subscriber chats and watches the answer arrive piece by
piece, sees what is left of the team's tokens fall after each answer, is refused cleanly at the daily
limit, and copies the curl snippet, whose request gives the same answer from the model API; an
Assistant-tier subscriber chats and cannot create API keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, main_text, path_of, submit_form_with

pytestmark = pytest.mark.e2e

PASSWORD = "Difference-Engine-1822"
SMALL = "Llama-3.3-8B-Instruct"

# Every change of the answer's text while it streams, and whether the usage panel was shown yet: set up
# in the page before sending, read back after the answer is done.
WATCH_ANSWER = """() => {
  window.__answerUpdates = [];
  const log = document.getElementById("chat-log");
  new MutationObserver(() => {
    const answers = log.querySelectorAll(".chat-assistant .chat-text");
    const last = answers[answers.length - 1];
    if (last) window.__answerUpdates.push({
      length: last.textContent.length,
      usageShown: !document.getElementById("usage-panel").hidden,
    });
  }).observe(log, {subtree: true, childList: true, characterData: true});
}"""


def _sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    fill_fields(page, login=email, password=PASSWORD)
    submit_form_with(page, "login")


def _send(page, message: str) -> None:
    page.locator("#chat-message").fill(message)
    page.locator("#chat-send").click()


def _remaining(page, limit: str) -> int:
    return int(page.locator(f"#limits-table tr[data-limit='{limit}']").get_attribute("data-remaining"))


def _last_answer(page) -> str:
    return page.locator("#chat-log .chat-assistant .chat-text").last.inner_text()


def _copied(page, lang: str) -> str:
    """Click the View code panel's Copy button of ``lang`` and read what it put on the clipboard."""
    button = page.locator(f"#copy-{lang}")
    button.click()
    expect(button).to_have_text("Copied")
    return page.evaluate("navigator.clipboard.readText()")


def _run(command: list[str], secret: str) -> subprocess.CompletedProcess:
    """Run a snippet from the page against the test's live server, with the team's key in the environment."""
    done = subprocess.run(
        command,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TIERLAB_API_KEY": secret},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_subscriber_chats_sees_tokens_fall_is_refused_at_the_limit_and_gets_the_same_answer_from_the_api(
    page, live_server, shot, seeded_catalog, settings
):
    from accounts import services as account_services
    from accounts.selectors import team_for_user
    from tiers import services as tier_services
    from tiers.models import Tier
    from usage.models import Conversation, ConversationMessage, UsageRecord

    settings.TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS = 0.03  # the pace of a served model
    # A tier with a small daily limit, so the test reaches it: five requests a day.
    tier = Tier.objects.create(
        slug="tiny", name="Tiny", is_paid=False, price_cents=0, requests_per_day=5, monthly_tokens=100_000
    )
    tier.allowed_models.set(seeded_catalog["free"].allowed_models.all())
    user = tier_services.user_create(email="ada@example.com", password=PASSWORD, tier_slug="tiny")
    team = team_for_user(user=user)
    _, secret = account_services.api_key_create(team=team, name="laptop", created_by=user)

    _sign_in(page, "ada@example.com")
    with page.expect_navigation():
        page.locator("#nav-playground").click()
    assert path_of(page.url) == "/playground/"
    expect(page.locator("#chat-model")).to_have_value(SMALL)

    # --- The first answer streams in: several text updates before it is complete.
    page.evaluate(WATCH_ANSWER)
    page.locator("#chat-system").fill("Answer like a shepherd.")
    _send(page, "How do llamas keep warm in the Andes?")
    expect(page.locator("#usage-panel")).to_be_visible()
    updates = page.evaluate("window.__answerUpdates")
    final = len(_last_answer(page))
    streaming = {u["length"] for u in updates if not u["usageShown"] and 0 < u["length"] < final}
    assert len(streaming) >= 3, updates
    shot("first-answer")
    first_left = _remaining(page, "monthly_tokens")
    first_total = int(page.locator("#usage-total").inner_text())
    assert first_left == 100_000 - first_total
    assert _remaining(page, "requests_per_day") == 4
    conversation = Conversation.objects.get()
    assert path_of(page.url) == f"/playground/c/{conversation.pk}/"
    expect(page.locator(f"#conversation-list [data-conversation-id='{conversation.pk}']")).to_be_visible()

    # --- A follow-up: what is left of the tokens falls.
    _send(page, "And when it rains?")
    expect(page.locator("#chat-log .chat-assistant")).to_have_count(2)
    expect(page.locator("#chat-send")).to_be_enabled()
    second_left = _remaining(page, "monthly_tokens")
    assert second_left == first_left - int(page.locator("#usage-total").inner_text()) < first_left
    assert _remaining(page, "requests_per_day") == 3
    records = list(UsageRecord.objects.filter(team=team).order_by("id"))
    assert len(records) == 2 and all(r.api_key_id is None and r.request_id.startswith("playground-") for r in records)

    # --- View code: copy the curl snippet and run it with the team's key: the API gives the same answer.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator("#code-toggle").click()
    expect(page.locator("#code-panel")).to_be_visible()
    expect(page.locator("#code-openai")).to_contain_text("OpenAI(")
    expect(page.locator("#code-llama")).to_contain_text("LlamaAPIClient(")
    snippet = _copied(page, "curl")
    assert snippet.startswith(f"curl {live_server.url}/v1/chat/completions")
    shot("view-code")
    done = _run(["/bin/bash", "-c", snippet + " --silent --show-error"], secret)
    answer = json.loads(done.stdout)
    assert answer["completion_message"]["content"]["text"] == _last_answer(page)
    assert UsageRecord.objects.filter(team=team, api_key__isnull=False).count() == 1  # metered on the same path
    # The two Python snippets, run as they are with the official SDKs, print the same answer.
    for lang in ("llama", "openai"):
        done = _run([sys.executable, "-c", _copied(page, lang)], secret)
        assert done.stdout == _last_answer(page) + "\n", lang
    assert UsageRecord.objects.filter(team=team, api_key__isnull=False).count() == 3

    # --- The daily limit (5: two messages and three API calls) is reached: refused in the page, nothing kept.
    before = (UsageRecord.objects.count(), ConversationMessage.objects.count())
    _send(page, "One more, please")
    error = page.locator("#chat-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Rate limit reached")
    assert error.get_attribute("data-code") == "rate_limit_exceeded"
    expect(page.locator("#chat-log .chat-assistant")).to_have_count(2)
    expect(page.locator("#chat-message")).to_have_value("One more, please")  # kept, to send later
    shot("refused")
    assert (UsageRecord.objects.count(), ConversationMessage.objects.count()) == before
    # The refused fetch is the page's health check's only "broken request", and the one intended.
    assert page.e2e_broken_requests.pop(f"{live_server.url}/playground/chat/") == "HTTP 429"

    # --- The conversation is kept: reopened from the list, renamed, deleted.
    page.goto("/playground/")
    with page.expect_navigation():
        page.locator(f"#conversation-list [data-conversation-id='{conversation.pk}'] a").click()
    expect(page.locator("#chat-log .chat-message")).to_have_count(4)
    expect(page.locator("#chat-system")).to_have_value("Answer like a shepherd.")
    page.locator("#conversation-manage summary").click()
    page.locator("#rename-title").fill("Warm llamas")
    with page.expect_navigation():
        page.locator("#rename-form button").click()
    expect(page.locator(f"#conversation-list [data-conversation-id='{conversation.pk}']")).to_have_text("Warm llamas")
    page.locator("#conversation-manage summary").click()
    with page.expect_navigation():
        page.locator("#delete-form button").click()
    assert path_of(page.url) == "/playground/"
    assert not Conversation.objects.exists() and UsageRecord.objects.count() == 5  # the usage stays
    assert_page_health(page)


def test_an_assistant_subscriber_chats_and_cannot_create_api_keys(page, seeded_catalog, settings, shot):
    from accounts.models import ApiKey
    from accounts.selectors import team_for_user
    from tiers import services as tier_services
    from usage.models import UsageRecord

    settings.TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS = 0.01
    user = tier_services.user_create(email="amy@example.com", password=PASSWORD, tier_slug="assistant")
    team = team_for_user(user=user)

    page.goto("/pricing/")
    expect(page.locator("[data-tier='assistant'] [data-api-access='no']")).to_contain_text("Playground only")

    _sign_in(page, "amy@example.com")
    page.goto("/playground/")
    _send(page, "Suggest a name for a llama")
    expect(page.locator("#usage-panel")).to_be_visible()
    assert _last_answer(page)
    expect(page.locator("#limits-table tr[data-limit='requests_per_day'] th")).to_have_text("Messages today")
    assert _remaining(page, "requests_per_day") == seeded_catalog["assistant"].requests_per_day - 1
    expect(page.locator("#code-panel")).to_be_hidden()
    page.locator("#code-toggle").click()
    expect(page.locator("#code-panel")).to_contain_text("does not include API access")
    shot("assistant-chat")
    assert UsageRecord.objects.filter(team=team, api_key__isnull=True).count() == 1

    with page.expect_navigation():
        page.locator("header").get_by_role("link", name="API keys").click()
    expect(page.locator("#api-access-refused")).to_contain_text("does not include API access")
    expect(page.locator("#create-key-form")).to_have_count(0)
    shot("assistant-keys")
    assert "Open the playground" in main_text(page)
    assert not ApiKey.objects.exists()
    assert_page_health(page)
