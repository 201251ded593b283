"""What the schema fuzzer (test_schema_fuzz.py) found when it first ran, each pinned here so it stays
fixed without the fuzzer's luck: 500s on odd shapes, parameters accepted and silently ignored, and
answers the schema did not document."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.security.test_bounded_input import CHAT, COMPAT_CHAT, assert_error, chat, post

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "message",
    [
        {"role": {}, "content": "hi"},  # an unhashable role was a 500
        {"role": "user", "content": [{"type": {}, "text": "hi"}]},  # an unhashable part type was a 500
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]},
        {"role": "user", "content": "hi", "name": {}},
    ],
)
@pytest.mark.parametrize("path", [CHAT, COMPAT_CHAT, "/v1/moderations"])
def test_odd_message_shapes_are_400_not_500(account, path, message):
    _, secret = account
    body = chat(messages=[message]) if path != "/v1/moderations" else {"messages": [message]}
    error = assert_error(post(path, body, secret), 400)
    assert error["param"].startswith("messages[0]")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat(n=2), "n"),  # n, stop and logprobs are OpenAI's: the native shape refuses them
        (CHAT, chat(stop=["llama"]), "stop"),
        (CHAT, chat(logprobs=True), "logprobs"),
        (COMPAT_CHAT, chat(best_of=2), "best_of"),
        (COMPAT_CHAT, chat(response_format={"type": "xml"}), "response_format"),
        ("/v1/moderations", {"messages": [{"role": "user", "content": "hi"}], "input": "x"}, "input"),
        (CHAT, chat(messages=[{"role": "user", "content": "hi", "colour": "red"}]), "messages[0].colour"),
        (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "x": 1}]}]),
         "messages[0].content[0].x"),
        (COMPAT_CHAT, chat(stream=True, stream_options={"include_usage": True, "x": 1}), "stream_options"),
    ],
)  # fmt: skip
def test_unknown_parameters_are_400_naming_them(account, path, body, param):
    """They were accepted and ignored, so a client believed they had an effect (issue 15 built the
    OpenAI ones on the compatible shape: tests/usage/test_model_api_features.py)."""
    _, secret = account
    assert_error(post(path, body, secret), 400, param=param)


def test_known_parameters_without_effect_are_accepted(account):
    _, secret = account
    assert post(CHAT, chat(user="end-user-7", top_k=40, repetition_penalty=1.1), secret).status_code == 200
    assert post(COMPAT_CHAT, chat(user="end-user-7", max_completion_tokens=5), secret).status_code == 200
    # An answer sent back as the OpenAI SDK serialises it (refusal: null) is a valid message.
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello", "refusal": None}]
    assert post(COMPAT_CHAT, chat(messages=[*history, {"role": "user", "content": "more"}]), secret).status_code == 200


def test_compat_max_tokens_is_checked_even_when_max_completion_tokens_wins(account):
    _, secret = account
    assert_error(post(COMPAT_CHAT, chat(max_completion_tokens=5, max_tokens=0), secret), 400, param="max_tokens")


@pytest.mark.parametrize("model", [0, False, [], {}])
def test_moderation_model_of_another_type_is_400(account, model):
    """A falsy non-string model fell back to the default model instead of being refused."""
    _, secret = account
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    assert_error(post("/v1/moderations", body, secret), 400, param="model")


@pytest.mark.parametrize("page", ["abc", "", "0", "-1", "1.5", "9" * 5000])
def test_a_page_that_is_not_a_positive_integer_is_400_naming_page(account, page):
    _, secret = account
    response = Client().get(f"/api/v1/keys?page={page}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(response, 400, "invalid", param="page")


def test_a_page_past_the_end_is_still_404(account):
    _, secret = account
    response = Client().get("/api/v1/keys?page=9", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(response, 404)


def test_usage_format_is_json_or_csv(account):
    _, secret = account
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(client.get("/api/v1/usage?format=xml"), 400, "invalid", param="format")
    assert client.get("/api/v1/usage?format=csv")["Content-Type"].startswith("text/csv")
    assert client.get("/api/v1/usage?format=&granularity=&start=").status_code == 200  # blank is absent


def test_the_schema_documents_every_json_api(account):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for path in ("/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/v1/moderations",
                 "/compat/v1/chat/completions", "/compat/v1/models", "/compat/v1/moderations",
                 "/api/v1/partner/usage-events",
                 "/api/v1/keys", "/api/v1/mau", "/api/v1/license"):  # fmt: skip
        assert path in paths, path
    assert set(schema["components"]["securitySchemes"]) >= {"ApiKey", "PartnerKey"}
    # Every operation documents its refusals in the one error shape.
    for path, item in paths.items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                assert "401" in operation["responses"] or path == "/api/v1/tiers", (method, path)
                for status, response in operation["responses"].items():
                    if status.startswith(("4", "5")):
                        ref = response["content"]["application/json"]["schema"]["$ref"]
                        assert ref == "#/components/schemas/Error", (method, path, status)
