"""The playground (/playground/): its chat endpoint metered on the model API's path, conversations kept
per person and team, and the refusals in the model API's codes."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import Membership
from accounts.selectors import CURRENT_TEAM_SESSION_KEY, team_for_user
from tiers import services as tier_services
from tiers.models import Tier
from usage import playground
from usage.models import (
    PLAYGROUND_REQUEST_ID_PREFIX,
    Conversation,
    ConversationMessage,
    TeamQuotaState,
    UsageRecord,
)
from usage.simulator import complete

SMALL = "Llama-3.3-8B-Instruct"
BIG = "Llama-3.3-70B-Instruct"
CHAT = "/playground/chat/"


@pytest.fixture(autouse=True)
def _no_pacing(settings):
    settings.TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS = 0


@pytest.fixture
def person(catalog):
    user = tier_services.user_create(email="ada@example.com", password="pw-Analytical-1843")
    return user, team_for_user(user=user)


def signed_in(user, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def chat(client: Client, **body) -> tuple[int, list[dict] | dict]:
    """POST a message; (status, the stream's events) or (status, the error body)."""
    payload = {"model": SMALL, "message": "How do llamas keep warm?", **body}
    response = client.post(CHAT, json.dumps(payload), content_type="application/json")
    if response.status_code != 200:
        return response.status_code, response.json()
    assert response["Content-Type"] == "application/x-ndjson"
    text = b"".join(response.streaming_content).decode()
    return 200, [json.loads(line) for line in text.splitlines() if line]


def test_a_message_streams_the_simulated_answer_and_is_metered_as_playground_usage(person):
    user, team = person
    status, events = chat(signed_in(user), system_prompt="Be brief.", temperature=0.5, max_tokens=40)
    assert status == 200
    assert [e["type"] for e in events[:2]] == ["start", "delta"] and events[-1]["type"] == "done"
    deltas = [e["text"] for e in events if e["type"] == "delta"]
    assert len(deltas) > 2  # pieces of four tokens, not one block
    expected = complete(
        model=SMALL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do llamas keep warm?"}],
        max_tokens=40,
    )
    assert "".join(deltas) == expected.text
    done = events[-1]
    assert done["usage"] == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.total_tokens,
    }

    # One usage record on the team, no key, a playground request id: the same counters as the API's.
    record = UsageRecord.objects.get()
    assert (record.team_id, record.api_key_id, record.model) == (team.pk, None, SMALL)
    assert record.request_id.startswith(PLAYGROUND_REQUEST_ID_PREFIX) and record.source == "playground"
    assert record.request_id == events[0]["request_id"]
    assert (record.prompt_tokens, record.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    state = TeamQuotaState.objects.get(team=team)
    assert (state.day_requests, state.period_tokens) == (1, expected.total_tokens)

    # What is left of each of the free tier's limits after this message.
    limits = {limit["name"]: limit for limit in done["limits"]}
    free = Tier.objects.get(slug="free")
    assert limits["monthly_tokens"]["remaining"] == free.monthly_tokens - expected.total_tokens
    assert limits["requests_per_day"]["remaining"] == free.requests_per_day - 1
    assert limits["requests_per_minute"]["remaining"] == free.requests_per_minute - 1

    conversation = Conversation.objects.get()
    assert (conversation.team_id, conversation.user_id, conversation.model) == (team.pk, user.pk, SMALL)
    assert (conversation.system_prompt, conversation.temperature, conversation.max_tokens) == ("Be brief.", 0.5, 40)
    assert conversation.title == "How do llamas keep warm?"
    turns = list(conversation.messages.values_list("role", "content", "request_id"))
    assert turns == [("user", "How do llamas keep warm?", ""), ("assistant", expected.text, record.request_id)]


def test_a_follow_up_sends_the_conversation_so_far_and_the_remaining_tokens_fall(person):
    user, _ = person
    client = signed_in(user)
    _, first = chat(client)
    conversation_id = first[0]["conversation"]["id"]
    _, second = chat(client, message="And in the rain?", conversation=conversation_id)
    assert second[0]["conversation"]["id"] == conversation_id
    answer = "".join(e["text"] for e in first if e["type"] == "delta")
    expected = complete(
        model=SMALL,
        messages=[
            {"role": "user", "content": "How do llamas keep warm?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And in the rain?"},
        ],
        max_tokens=None,
    )
    assert "".join(e["text"] for e in second if e["type"] == "delta") == expected.text

    def left(events):
        return {limit["name"]: limit["remaining"] for limit in events[-1]["limits"]}

    assert left(second)["monthly_tokens"] == left(first)["monthly_tokens"] - expected.total_tokens
    assert left(second)["requests_per_day"] == left(first)["requests_per_day"] - 1
    assert Conversation.objects.count() == 1 and ConversationMessage.objects.count() == 4


def test_a_refusal_has_the_api_code_and_message_and_changes_nothing(person, catalog):
    user, team = person
    tiny = Tier.objects.create(
        slug="tiny", name="Tiny", is_paid=False, price_cents=0, requests_per_day=1, monthly_tokens=100_000
    )
    tiny.allowed_models.set([catalog["free"].allowed_models.get()])
    team.subscriptions.update(tier=tiny)
    client = signed_in(user)
    assert chat(client)[0] == 200
    before = (UsageRecord.objects.count(), Conversation.objects.count(), ConversationMessage.objects.count())

    status, body = chat(client, message="Another one")
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "1 requests per day" in body["error"]["message"]
    # A model the tier does not include: the API's 403.
    status, body = chat(client, model=BIG)
    assert (status, body["error"]["code"], body["error"]["param"]) == (403, "model_not_allowed", "model")
    assert (UsageRecord.objects.count(), Conversation.objects.count(), ConversationMessage.objects.count()) == before
    assert TeamQuotaState.objects.get(team=team).day_requests == 1


def test_a_refused_first_message_makes_no_conversation(person):
    user, team = person
    team.subscriptions.update(status="suspended")
    status, body = chat(signed_in(user))
    assert (status, body["error"]["code"]) == (429, "subscription_inactive")
    assert not Conversation.objects.exists() and not UsageRecord.objects.exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"message": "  "}, "message"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"conversation": "1"}, "conversation"),
        ({"stream": True}, "stream"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(person, body, param):
    user, _ = person
    status, error = chat(signed_in(user), **body)
    assert (status, error["error"]["code"], error["error"]["param"]) == (400, "invalid_request", param)
    assert not UsageRecord.objects.exists() and not Conversation.objects.exists()


def test_the_chat_endpoint_needs_a_session_and_the_csrf_token(person):
    user, _ = person
    anonymous = Client()
    response = anonymous.post(CHAT, json.dumps({"model": SMALL, "message": "hi"}), content_type="application/json")
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"

    client = signed_in(user, csrf=True)
    response = client.post(CHAT, json.dumps({"model": SMALL, "message": "hi"}), content_type="application/json")
    assert response.status_code == 403  # Django's CSRF refusal
    assert not UsageRecord.objects.exists()
    page = client.get("/playground/")
    token = page.context["csrf_token"]
    body = json.dumps({"model": SMALL, "message": "hi"})
    response = client.post(CHAT, body, content_type="application/json", HTTP_X_CSRFTOKEN=str(token))
    assert response.status_code == 200
    b"".join(response.streaming_content)
    assert UsageRecord.objects.count() == 1


def test_a_stream_closed_early_counts_what_was_sent(person):
    user, team = person
    chat_input = playground.ChatInput(message="Tell me about alpacas", model=SMALL)
    turn = playground.playground_turn_start(team=team, user=user, chat=chat_input)
    events = playground.playground_turn_events(turn)
    next(events), next(events), next(events)  # start and two pieces: the first is certainly sent
    events.close()  # the person left: the server closes the response, which closes the stream
    record = UsageRecord.objects.get()
    full = complete(model=SMALL, messages=[{"role": "user", "content": "Tell me about alpacas"}], max_tokens=None)
    assert 0 < record.completion_tokens < full.completion_tokens
    answer = ConversationMessage.objects.get(role="assistant")
    assert answer.stop_reason == "cut" and full.text.startswith(answer.content) and answer.content
    assert TeamQuotaState.objects.get(team=team).period_tokens == record.total_tokens


# --- Conversations ------------------------------------------------------------------------------------------


def _conversation_of(user, team, title="Mine") -> Conversation:
    from django.utils import timezone

    now = timezone.now()
    return Conversation.objects.create(team=team, user=user, title=title, model=SMALL, created_at=now, updated_at=now)


def test_the_page_lists_only_my_conversations_in_the_current_team(person, catalog):
    user, team = person
    other = tier_services.user_create(email="bob@example.com")
    mine = _conversation_of(user, team, "Llama facts")
    _conversation_of(other, team_for_user(user=other), "Bob's secret")
    client = signed_in(user)
    page = client.get("/playground/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Llama facts" in html and "Bob&#x27;s secret" not in html and "Bob's secret" not in html
    assert f'<option value="{SMALL}"' in html and BIG not in html  # the free tier's models only
    assert client.get(f"/playground/c/{mine.pk}/").status_code == 200


def test_another_persons_conversation_is_not_found_everywhere(person, catalog):
    user, _ = person
    other = tier_services.user_create(email="bob@example.com", password="pw-Bob-1234567")
    theirs = _conversation_of(other, team_for_user(user=other), "Bob's")
    client = signed_in(user)
    assert client.get(f"/playground/c/{theirs.pk}/").status_code == 404
    assert client.post(f"/playground/c/{theirs.pk}/rename/", {"title": "Stolen"}).status_code == 404
    assert client.post(f"/playground/c/{theirs.pk}/delete/").status_code == 404
    status, body = chat(client, conversation=theirs.pk)
    assert (status, body["error"]["code"]) == (404, "not_found")
    theirs.refresh_from_db()
    assert theirs.title == "Bob's" and not theirs.messages.exists() and not UsageRecord.objects.exists()


def test_a_teammates_conversation_in_the_same_team_is_not_found_either(person, catalog):
    user, team = person
    colleague = tier_services.user_create(email="grace@example.com")
    Membership.objects.create(user=colleague, team=team, role=Membership.Role.MEMBER)
    theirs = _conversation_of(colleague, team, "Grace's")
    assert signed_in(user).get(f"/playground/c/{theirs.pk}/").status_code == 404


def test_rename_and_delete_need_the_csrf_token(person):
    user, team = person
    conversation = _conversation_of(user, team, "Before")
    client = signed_in(user, csrf=True)
    assert client.post(f"/playground/c/{conversation.pk}/rename/", {"title": "After"}).status_code == 403
    assert client.post(f"/playground/c/{conversation.pk}/delete/").status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "Before"

    token = str(client.get(f"/playground/c/{conversation.pk}/").context["csrf_token"])
    response = client.post(f"/playground/c/{conversation.pk}/rename/", {"title": "After", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "After"
    response = client.post(f"/playground/c/{conversation.pk}/rename/", {"title": " ", "csrfmiddlewaretoken": token})
    conversation.refresh_from_db()
    assert conversation.title == "After"  # refused with a message
    response = client.post(f"/playground/c/{conversation.pk}/delete/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == "/playground/"
    assert not Conversation.objects.exists()


def test_the_current_team_is_the_one_charged_and_the_conversation_is_kept_in_it(person, catalog):
    user, personal = person
    owner = tier_services.user_create(email="owner@example.com")
    shared = team_for_user(user=owner)
    Membership.objects.create(user=user, team=shared, role=Membership.Role.MEMBER)
    client = signed_in(user)
    session = client.session
    session[CURRENT_TEAM_SESSION_KEY] = shared.pk
    session.save()
    assert chat(client)[0] == 200
    record = UsageRecord.objects.get()
    assert record.team_id == shared.pk and record.api_key_id is None
    conversation = Conversation.objects.get()
    assert conversation.team_id == shared.pk
    # Back in the personal team, that conversation is not listed, nor found.
    session[CURRENT_TEAM_SESSION_KEY] = personal.pk
    session.save()
    assert client.get(f"/playground/c/{conversation.pk}/").status_code == 404


def test_a_client_request_id_cannot_pose_as_the_playground(person):
    _, team = person
    _, secret = account_services.api_key_create(team=team, name="k")
    response = Client().post(
        "/v1/chat/completions",
        json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        HTTP_X_REQUEST_ID="playground-123",
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "X-Request-Id"
    assert not UsageRecord.objects.exists()


def test_operators_see_the_source_of_each_usage_record_in_the_admin(person, client):
    from accounts.models import User

    user, team = person
    assert chat(signed_in(user))[0] == 200
    _, secret = account_services.api_key_create(team=team, name="k")
    body = json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "hi"}]})
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.post("/v1/chat/completions", body, content_type="application/json").status_code == 200
    assert sorted(record.source for record in UsageRecord.objects.all()) == ["api", "playground"]
    client.force_login(User.objects.create_superuser(email="op@example.com", password="pw-Operator-1"))
    html = client.get("/admin/usage/usagerecord/").content.decode()
    assert '<td class="field-source">Playground</td>' in html and '<td class="field-source">API</td>' in html


def test_a_follow_up_message_costs_a_bounded_number_of_queries(person, django_assert_max_num_queries):
    user, _ = person
    client = signed_in(user)
    _, first = chat(client)
    # Session and role (4), the conversation and its history (2), reserve (1 transaction: 2 statements),
    # the person's message (1 transaction: 2), settle (1 transaction: 3), the answer (1 transaction: 2),
    # with their savepoints.
    with django_assert_max_num_queries(23):
        status, _ = chat(client, message="More?", conversation=first[0]["conversation"]["id"])
    assert status == 200
