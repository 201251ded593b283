"""Issue 15, the model API in depth, through Django's test client: tool calls, structured output,
``n``, ``stop``, ``logprobs``, the penalties, unknown parameters and /compat/v1/moderations, in both
shapes, streamed and not, with the tokens counted for every choice and tool call."""

from __future__ import annotations

import json

import jsonschema
import pytest
from django.test import Client

from accounts import services
from accounts.selectors import api_key_cache_clear, team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear
from usage.model_api import COMPAT, NATIVE, PARAMETERS
from usage.models import UsageRecord
from usage.tokenizer import count_tokens

CHAT = "/v1/chat/completions"
COMPAT_CHAT = "/compat/v1/chat/completions"
SMALL = "Llama-3.3-8B-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
STOCKS = {
    "type": "function",
    "function": {
        "name": "lookup_stock",
        "description": "Look up the share price of a listed company",
        "parameters": {"type": "object", "properties": {"ticker": {"type": "string", "maxLength": 5}}},
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "role": {"enum": ["admin", "member"]},
        "manager": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    },
    "required": ["name", "age", "email", "tags", "role", "manager"],
    "additionalProperties": False,
}


@pytest.fixture
def secret(catalog):
    api_key_cache_clear()
    entitlements_cache_clear()
    user = tier_services.user_create(email="features@example.com")
    team = team_for_user(user=user)
    free = Tier.objects.get(slug="free")
    tier = Tier.objects.create(slug="open", name="Open", is_paid=False, price_cents=0, requests_per_minute=None,
                               tokens_per_minute=None, requests_per_day=None, monthly_tokens=None)  # fmt: skip
    tier.allowed_models.set(free.allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    _, raw = services.api_key_create(team=team, name="features")
    yield raw
    api_key_cache_clear()
    entitlements_cache_clear()


def post(path, body, secret):
    return Client().post(path, json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")


def ask(text, **extra):
    return {"model": SMALL, "messages": [{"role": "user", "content": text}], **extra}


def events(response) -> list:
    lines = b"".join(response.streaming_content).decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


def answer_text(body: dict) -> str:
    if "completion_message" in body:
        return body["completion_message"]["content"]["text"]
    return body["choices"][0]["message"]["content"]


def compat_stream_merged(chunks: list) -> dict:
    """What the openai SDK's stream accumulator builds: per choice, the content, tool calls and finish."""
    choices: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            merged = choices.setdefault(choice["index"], {"content": "", "tool_calls": {}, "finish_reason": None})
            delta = choice["delta"]
            merged["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls", []):
                into = merged["tool_calls"].setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                into["id"] = call.get("id") or into["id"]
                into["name"] += call.get("function", {}).get("name") or ""
                into["arguments"] += call.get("function", {}).get("arguments") or ""
            merged["finish_reason"] = choice["finish_reason"] or merged["finish_reason"]
    return choices


# --- Tools ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_native_tool_call_when_the_message_names_the_tools_keyword_with_schema_valid_arguments(secret):
    body = post(CHAT, ask("What is the weather in Paris tomorrow?", tools=[WEATHER, STOCKS]), secret).json()
    message = body["completion_message"]
    assert message["stop_reason"] == "tool_calls"
    [call] = message["tool_calls"]  # the stock tool is not named
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert arguments["city"] == "Paris"  # the proper noun of the message
    metrics = {m["metric"]: m["value"] for m in body["metrics"]}
    assert metrics["num_completion_tokens"] == count_tokens("get_weather") + count_tokens(call["function"]["arguments"])
    # Same request, same call.
    again = post(CHAT, ask("What is the weather in Paris tomorrow?", tools=[WEATHER, STOCKS]), secret).json()
    assert again["completion_message"]["tool_calls"] == message["tool_calls"]


@pytest.mark.django_db
def test_tool_choice_none_auto_required_and_named(secret):
    plain = "Tell me about llamas."
    auto = post(CHAT, ask(plain, tools=[WEATHER]), secret).json()["completion_message"]
    assert auto["stop_reason"] == "stop" and "tool_calls" not in auto and auto["content"]["text"]
    required = post(CHAT, ask(plain, tools=[WEATHER, STOCKS], tool_choice="required"), secret).json()
    assert [c["function"]["name"] for c in required["completion_message"]["tool_calls"]] == ["get_weather"]
    named = {"type": "function", "function": {"name": "lookup_stock"}}
    forced = post(COMPAT_CHAT, ask(plain, tools=[WEATHER, STOCKS], tool_choice=named), secret).json()
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup_stock"
    jsonschema.validate(json.loads(call["function"]["arguments"]), STOCKS["function"]["parameters"])
    none = post(CHAT, ask("weather in Paris?", tools=[WEATHER], tool_choice="none"), secret).json()
    assert none["completion_message"]["stop_reason"] == "stop"
    both = ask("weather in Paris, and the share price of ACME?", tools=[WEATHER, STOCKS])
    assert len(post(COMPAT_CHAT, both, secret).json()["choices"][0]["message"]["tool_calls"]) == 2
    one = post(COMPAT_CHAT, {**both, "parallel_tool_calls": False}, secret).json()
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("path", [CHAT, COMPAT_CHAT])
def test_tool_result_round_trip_answers_with_the_result(secret, path):
    first = post(path, ask("What is the weather in Lisbon?", tools=[WEATHER]), secret).json()
    if path == CHAT:
        assistant = first["completion_message"]
        call = assistant["tool_calls"][0]
    else:
        assistant = first["choices"][0]["message"]
        call = assistant["tool_calls"][0]
    messages = [
        {"role": "user", "content": "What is the weather in Lisbon?"},
        assistant,  # sent back as the API returned it
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 23, "sky": "sunny"}'},
    ]
    second = post(path, {"model": SMALL, "messages": messages, "tools": [WEATHER]}, secret).json()
    text = (
        second["completion_message"]["content"]["text"] if path == CHAT else second["choices"][0]["message"]["content"]
    )
    assert 'The get_weather tool returned: {"temperature": 23, "sky": "sunny"}.' in text
    stop = second["completion_message"]["stop_reason"] if path == CHAT else second["choices"][0]["finish_reason"]
    assert stop == "stop"


@pytest.mark.django_db
def test_streamed_tool_calls_match_the_answer_in_both_shapes(secret):
    request = ask("Weather in Oslo please", tools=[WEATHER])
    native = post(CHAT, request, secret).json()["completion_message"]
    streamed = events(post(CHAT, {**request, "stream": True}, secret))
    deltas = [e["event"]["delta"] for e in streamed if e["event"]["event_type"] == "progress"]
    assert deltas[0]["type"] == "tool_call" and deltas[0]["id"] == native["tool_calls"][0]["id"]
    assert deltas[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in deltas) == native["tool_calls"][0]["function"]["arguments"]
    assert streamed[-2]["event"]["stop_reason"] == "tool_calls"

    compat = post(COMPAT_CHAT, request, secret).json()["choices"][0]["message"]["tool_calls"][0]
    merged = compat_stream_merged(events(post(COMPAT_CHAT, {**request, "stream": True}, secret)))
    assert merged[0]["finish_reason"] == "tool_calls"
    expected = {"id": compat["id"], "name": "get_weather", "arguments": compat["function"]["arguments"]}
    assert merged[0]["tool_calls"][0] == expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tools", "tool_choice", "param"),
    [
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}], None,
         "tools[0].function.parameters.not"),
        ([WEATHER], {"type": "function", "function": {"name": "other"}}, "tool_choice.function.name"),
        (None, "required", "tool_choice"),
        ([{"type": "function", "function": {"name": "f", "extra": 1}}], None, "tools[0].function.extra"),
    ],
)  # fmt: skip
def test_bad_tools_are_a_400_naming_the_param(secret, tools, tool_choice, param):
    body = ask("hi")
    if tools is not None:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    response = post(COMPAT_CHAT, body, secret)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not UsageRecord.objects.exists()


# --- Structured output ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates_in_both_shapes(secret, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    request = ask("Invent an employee called Grace", response_format=fmt, stream=stream)
    if stream:
        progress = [e["event"] for e in events(post(CHAT, request, secret)) if e["event"]["event_type"] == "progress"]
        native_text = "".join(event["delta"]["text"] for event in progress)
        compat_text = compat_stream_merged(events(post(COMPAT_CHAT, request, secret)))[0]["content"]
    else:
        native_text = post(CHAT, request, secret).json()["completion_message"]["content"]["text"]
        compat_text = post(COMPAT_CHAT, request, secret).json()["choices"][0]["message"]["content"]
    for text in (native_text, compat_text):
        value = json.loads(text)
        jsonschema.validate(value, PERSON, format_checker=jsonschema.FormatChecker())
    assert json.loads(native_text)["name"] == "Grace"


@pytest.mark.django_db
def test_json_object_output_and_unsupported_schema_features(secret):
    for path in (CHAT, COMPAT_CHAT):
        response = post(path, ask("Describe alpacas", response_format={"type": "json_object"}), secret).json()
        text = answer_text(response)
        assert isinstance(json.loads(text), dict) and json.loads(text)["answer"]
    unsupported = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": unsupported}}
    for path in (CHAT, COMPAT_CHAT):
        refused = post(path, ask("hi", response_format=fmt), secret)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["param"] == "response_format.json_schema.schema.properties.code.pattern"
        assert "'pattern' is not supported" in error["message"]
    impossible = {"type": "integer", "minimum": 10, "maximum": 2}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": impossible}}
    assert post(COMPAT_CHAT, ask("hi", response_format=fmt), secret).status_code == 400
    assert UsageRecord.objects.count() == 2  # the two JSON objects; refusals count nothing


# --- n, stop, logprobs, penalties, unknown parameters -----------------------------------------------


@pytest.mark.django_db
def test_n_choices_are_all_counted_and_recorded(secret):
    body = post(COMPAT_CHAT, ask("Explain vector databases", n=3, max_tokens=60), secret).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == 3
    single = post(COMPAT_CHAT, ask("Explain vector databases", max_tokens=60), secret).json()
    assert single["choices"][0]["message"]["content"] == texts[0]  # choice 0 is what n=1 gives
    assert body["usage"]["completion_tokens"] == sum(count_tokens(t) for t in texts)
    record = UsageRecord.objects.order_by("created_at").first()
    assert record.completion_tokens == body["usage"]["completion_tokens"]
    request = ask("Explain vector databases", n=3, max_tokens=60, stream=True)
    streamed = compat_stream_merged(events(post(COMPAT_CHAT, request, secret)))
    assert [streamed[i]["content"] for i in range(3)] == texts
    assert UsageRecord.objects.order_by("-created_at").first().completion_tokens == body["usage"]["completion_tokens"]


@pytest.mark.django_db
def test_the_stream_reservation_covers_every_choice(secret):
    Tier.objects.filter(slug="open").update(tokens_per_minute=300)
    entitlements_cache_clear()
    # Reserves prompt + n x 100: one choice fits in 300 tokens a minute, three do not.
    assert post(COMPAT_CHAT, ask("hi", max_tokens=100, stream=True), secret).status_code == 200
    refused = post(COMPAT_CHAT, ask("hi", max_tokens=100, n=3, stream=True), secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.django_db
def test_stop_sequence_cuts_the_text_before_it(secret):
    full = post(COMPAT_CHAT, ask("Tell me about alpacas"), secret).json()["choices"][0]["message"]["content"]
    word = full.split()[4]
    cut = post(COMPAT_CHAT, ask("Tell me about alpacas", stop=[word, "zzzz"]), secret).json()
    choice = cut["choices"][0]
    assert choice["message"]["content"] == full[: full.find(word)]
    assert choice["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] == count_tokens(full[: full.find(word)])
    request = ask("Tell me about alpacas", stop=word, stream=True)
    streamed = compat_stream_merged(events(post(COMPAT_CHAT, request, secret)))
    assert streamed[0]["content"] == full[: full.find(word)]


@pytest.mark.django_db
def test_logprobs_are_consistent_with_the_tokens(secret):
    body = post(COMPAT_CHAT, ask("Describe llamas", logprobs=True, top_logprobs=3, max_tokens=30), secret).json()
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]) == entry["token"].encode()
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == entry["token"]
        assert all(other["logprob"] < top[0]["logprob"] for other in top[1:])
    assert post(COMPAT_CHAT, ask("Describe llamas", max_tokens=30), secret).json()["choices"][0]["logprobs"] is None
    assert post(COMPAT_CHAT, ask("hi", top_logprobs=2), secret).json()["error"]["param"] == "top_logprobs"


@pytest.mark.django_db
def test_penalties_seed_and_user_are_accepted_and_documented_effects_hold(secret):
    base = post(COMPAT_CHAT, ask("Describe llamas"), secret).json()["choices"][0]["message"]["content"]
    same = post(COMPAT_CHAT, ask("Describe llamas", presence_penalty=1.5, frequency_penalty=-1, user="u-1"), secret)
    assert same.json()["choices"][0]["message"]["content"] == base  # no effect on the simulated model
    seeded = post(COMPAT_CHAT, ask("Describe llamas", seed=7), secret).json()["choices"][0]["message"]["content"]
    assert seeded != base
    assert post(COMPAT_CHAT, ask("hi", presence_penalty=3), secret).json()["error"]["param"] == "presence_penalty"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "name", "value"),
    [(CHAT, "n", 2), (CHAT, "stop", "x"), (CHAT, "logprobs", True), (COMPAT_CHAT, "logit_bias_x", 1),
     (COMPAT_CHAT, "top_k", 3), (CHAT, "frequency_penalty", 0.5)],
)  # fmt: skip
def test_unknown_parameters_are_refused_naming_them(secret, path, name, value):
    response = post(path, ask("hi", **{name: value}), secret)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == name and name in response.json()["error"]["message"]


# --- /compat/v1/moderations -------------------------------------------------------------------------


@pytest.mark.django_db
def test_compat_moderations_in_openai_shape(secret):
    response = post("/compat/v1/moderations", {"input": ["I want to kill someone", "I like llamas"]}, secret)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "omni-moderation-latest" and body["id"].startswith("modr-")
    flagged, benign = body["results"]
    assert flagged["flagged"] and flagged["categories"]["violence"] and not flagged["categories"]["hate"]
    assert not benign["flagged"] and not any(benign["categories"].values())
    assert set(flagged["category_scores"]) == set(flagged["categories"]) == set(flagged["category_applied_input_types"])
    one = post("/compat/v1/moderations", {"input": "how to commit suicide"}, secret).json()
    assert one["results"][0]["categories"]["self-harm"]
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]
    multimodal = post("/compat/v1/moderations", {"input": parts}, secret).json()
    [result] = multimodal["results"]
    assert "image" in result["category_applied_input_types"]["sexual"]
    assert post("/compat/v1/moderations", {"input": []}, secret).json()["error"]["param"] == "input"
    assert post("/compat/v1/moderations", {"input": "x", "model": "nope"}, secret).status_code == 404
    assert post("/compat/v1/moderations", {"input": "x", "extra": 1}, secret).json()["error"]["param"] == "extra"
    assert UsageRecord.objects.filter(total_tokens=0).count() == 3


# --- The schema -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_documents_exactly_the_parameters_each_shape_accepts(catalog):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    assert set(components["LlamaChatRequest"]["properties"]) == PARAMETERS[NATIVE]
    assert set(components["OpenAIChatRequest"]["properties"]) == PARAMETERS[COMPAT]
    choice = components["OpenAIChatCompletion"]["properties"]["choices"]["items"]["properties"]
    assert "tool_calls" in choice["message"]["properties"] and "tool_calls" in choice["finish_reason"]["enum"]
    assert "tool_calls" in components["LlamaChatCompletion"]["properties"]["completion_message"]["properties"]
    assert schema["paths"]["/compat/v1/moderations"]["post"]["operationId"] == "compat_moderations_create"
