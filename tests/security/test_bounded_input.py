"""Bounded input on both APIs (issue 11, finding 4 and item 7): oversized, deeply nested and invalid
Unicode bodies, out-of-range dates, unknown paths, wrong methods, a lower-case bearer scheme and an
unknown moderation model each answer a 4xx in the JSON error shape, never a 500 or an HTML page."""

from __future__ import annotations

import io
import json

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from core.json_input import JsonInputError, json_loads_bounded

CHAT = "/v1/chat/completions"
COMPAT_CHAT = "/compat/v1/chat/completions"
SMALL = "Llama-3.3-8B-Instruct"


def chat(**overrides) -> dict:
    return {"model": SMALL, "messages": [{"role": "user", "content": "What is a llama?"}], **overrides}


def post(path: str, data: bytes | str | dict, secret: str | None = None, *, scheme: str = "Bearer", **extra):
    if secret:
        extra["HTTP_AUTHORIZATION"] = f"{scheme} {secret}"
    body = data if isinstance(data, bytes | str) else json.dumps(data)
    return Client().post(path, body, content_type="application/json", **extra)


def assert_error(response, status: int, code: str | None = None, *, param: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def nested(depth: int) -> str:
    return f'{{"model": "{SMALL}", "messages": {"[" * depth + "]" * depth}}}'


# --- The model API ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_normal_chat_request_still_works(account):
    _, secret = account
    response = post(CHAT, chat(), secret)
    assert response.status_code == 200 and response.json()["completion_message"]["content"]["text"]
    response = post(COMPAT_CHAT, chat(messages=[{"role": "user", "content": "naïve café 😀 \\u escaped"}]), secret)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", [CHAT, COMPAT_CHAT, "/v1/moderations"])
def test_a_body_over_the_limit_is_413(account, path):
    _, secret = account
    big = chat(messages=[{"role": "user", "content": "x" * (3 * 1024 * 1024)}])
    assert_error(post(path, big, secret), 413, "request_too_large")


@pytest.mark.django_db
@override_settings(TIERLAB_MAX_BODY_BYTES=1000)
def test_the_body_limit_is_a_setting(account):
    _, secret = account
    assert post(CHAT, chat(), secret).status_code == 200
    assert_error(post(CHAT, chat(messages=[{"role": "user", "content": "x" * 1000}]), secret), 413, "request_too_large")


@pytest.mark.django_db
@override_settings(TIERLAB_MAX_BODY_BYTES=1000)
def test_a_chunked_body_without_content_length_is_bounded_too(account):
    _, secret = account
    big = json.dumps(chat(messages=[{"role": "user", "content": "x" * 5000}])).encode()
    small = json.dumps(chat()).encode()
    # What gunicorn hands over for a chunked body: no Content-Length, an input stream read to its end.
    extra = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    assert_error(post(CHAT, big, secret, **extra, **{"wsgi.input": io.BytesIO(big)}), 413, "request_too_large")
    # Under the limit, the de-chunked body reaches the view whole.
    assert post(CHAT, small, secret, **extra, **{"wsgi.input": io.BytesIO(small)}).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_400(account, depth):
    _, secret = account
    error = assert_error(post(CHAT, nested(depth), secret), 400)
    assert error["type"] == "invalid_request_error" and "deep" in error["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "raw, param",
    [
        ('{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        ('{"model": "m", "messages": [{"role": "user", "content": "a\\u0000b"}]}', "messages[0].content"),
        ('{"model": "\\uDFFF", "messages": []}', "model"),
    ],
)
def test_lone_surrogates_and_nul_are_400_naming_the_param(account, raw, param):
    _, secret = account
    assert_error(post(CHAT, raw, secret), 400, param=param)
    assert_error(post(COMPAT_CHAT, raw, secret), 400, param=param)


@pytest.mark.django_db
def test_out_of_range_integers_are_400(account):
    _, secret = account
    assert_error(post(CHAT, chat(seed=2**64), secret), 400, param="seed")
    assert_error(post(CHAT, '{"model": "m", "messages": [], "seed": %s}' % ("9" * 5000), secret), 400)
    assert_error(post(CHAT, '{"model": "m", "messages": [], "temperature": NaN}', secret), 400)


@pytest.mark.django_db
def test_a_lower_case_bearer_scheme_is_accepted(account):
    _, secret = account
    assert post(CHAT, chat(), secret, scheme="bearer").status_code == 200
    assert post(CHAT, chat(), secret, scheme="BEARER").status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"bearer {secret}")
    assert client.get("/api/v1/me").status_code == 200


@pytest.mark.django_db
def test_moderation_with_an_unknown_model_is_404(account):
    _, secret = account
    body = {"model": "No-Such-Guard", "messages": [{"role": "user", "content": "hello"}]}
    assert_error(post("/v1/moderations", body, secret), 404, "model_not_found", param="model")
    body["model"] = "Llama-Guard-4-12B"
    assert post("/v1/moderations", body, secret).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/v1/nope", "/compat/v1/nope", "/api/nope", "/api/v1/nope", "/v1", "/compat/v1/"])
@pytest.mark.parametrize("debug", [False, True])
def test_unknown_api_paths_are_a_json_404(account, path, debug, settings):
    settings.DEBUG = debug
    _, secret = account
    for response in (Client().get(path), post(path, {}, secret)):
        assert_error(response, 404, "not_found")
        assert b"urlpatterns" not in response.content and b"<html" not in response.content.lower()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("get", CHAT, "POST"),
        ("delete", COMPAT_CHAT, "POST"),
        ("get", "/v1/moderations", "POST"),
        ("post", "/v1/models", "GET"),
        ("put", "/api/v1/me", None),
        ("get", "/api/v1/partner/usage-events", "POST"),
    ],
)
def test_405_is_json_with_allow(account, method, path, allow):
    _, secret = account
    response = getattr(Client(), method)(path, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(response, 405, "method_not_allowed")
    assert response.has_header("Allow")
    if allow:
        assert response["Allow"] == allow


# --- The account API --------------------------------------------------------------------------------


@pytest.fixture
def session(account):
    user, _ = account
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_account_api_normal_post_still_works(session):
    response = session.post("/api/v1/keys", {"name": "ci"}, format="json")
    assert response.status_code == 201, response.content


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [65, 100_000])
def test_account_api_nested_json_is_400(session, depth):
    body = '{"name": %s}' % ("[" * depth + "]" * depth)
    response = session.generic("POST", "/api/v1/keys", body, content_type="application/json")
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.django_db
def test_account_api_lone_surrogate_is_400_naming_the_param(session):
    response = session.generic("POST", "/api/v1/keys", '{"name": "\\ud800"}', content_type="application/json")
    assert_error(response, 400, param="name")


@pytest.mark.django_db
def test_account_api_body_over_the_limit_is_a_json_413(session):
    body = json.dumps({"name": "x" * (10 * 1024 * 1024)})
    response = session.generic("POST", "/api/v1/keys", body, content_type="application/json")
    assert_error(response, 413, "request_too_large")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query, param",
    [
        ("start=0001-01-01T00:00:00%2B14:00", "start"),
        ("end=0001-01-01", "end"),
        ("start=2026-02-30", "start"),
        ("end=9999-12-31T23:59:59-14:00", "end"),
    ],
)
def test_usage_out_of_range_dates_are_400(session, query, param):
    assert_error(session.get(f"/api/v1/usage?{query}"), 400, param=param)


@pytest.mark.django_db
def test_account_api_out_of_range_integers_are_400(session):
    url = "/api/v1/subscription/spend-cap"
    for body in (f'{{"amount_cents": {2**64}, "hard": true}}', '{"amount_cents": 1e999}'):
        response = session.generic("PUT", url, body, content_type="application/json")
        assert_error(response, 400, param="amount_cents")


# --- The loader -------------------------------------------------------------------------------------


def test_the_loader_names_the_path_and_keeps_good_unicode():
    assert json_loads_bounded(b'{"a": ["\\ud83d\\ude00", "caf\\u00e9"]}') == {"a": ["😀", "café"]}
    with pytest.raises(JsonInputError) as raised:
        json_loads_bounded(b'{"a": [1, {"b": "\\udc00"}]}')
    assert raised.value.param == "a[1].b"
    with pytest.raises(JsonInputError):
        json_loads_bounded('"\ud800"'.encode("utf-8", "surrogatepass"))  # an encoded surrogate is not UTF-8
    assert json_loads_bounded("[" * 64 + "]" * 64) is not None
    assert json_loads_bounded('["[[[[' + "[" * 100 + '"]') == ["[[[[" + "[" * 100]
