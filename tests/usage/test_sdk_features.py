"""Issue 15 with the official SDKs, unchanged, against a live TierLab server: tool calls round trip
(call → tool result → answer), structured output parsed into pydantic models, ``n``, ``stop``,
``logprobs``, /compat/v1/moderations and unknown parameters refused with a typed BadRequestError."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import llama_api_client
import openai
import pytest
from pydantic import BaseModel, Field

from accounts import services
from accounts.selectors import api_key_cache_clear, team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear
from usage.models import UsageRecord

SMALL = "Llama-3.3-8B-Instruct"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather forecast for a city",
        "parameters": WEATHER_PARAMETERS,
    },
}


class Ingredient(BaseModel):
    name: str
    grams: int = Field(ge=1, le=1000)


class Recipe(BaseModel):
    title: str
    course: Literal["starter", "main", "dessert"]
    ingredients: list[Ingredient]
    vegetarian: bool


class GetWeather(BaseModel):
    """Get the current weather forecast for a city"""

    city: str
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture
def secret(transactional_db, catalog):
    api_key_cache_clear()
    entitlements_cache_clear()
    user = tier_services.user_create(email="sdk-features@example.com")
    team = team_for_user(user=user)
    tier = Tier.objects.create(slug="open", name="Open", is_paid=False, price_cents=0, requests_per_minute=None,
                               tokens_per_minute=None, requests_per_day=None, monthly_tokens=None)  # fmt: skip
    tier.allowed_models.set(Tier.objects.get(slug="free").allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    _, raw = services.api_key_create(team=team, name="sdk")
    yield raw
    api_key_cache_clear()
    entitlements_cache_clear()


def oai(live_server, secret) -> openai.OpenAI:
    return openai.OpenAI(api_key=secret, base_url=f"{live_server.url}/compat/v1", max_retries=0, timeout=20)


def llama(live_server, secret) -> llama_api_client.LlamaAPIClient:
    return llama_api_client.LlamaAPIClient(api_key=secret, base_url=f"{live_server.url}/v1", max_retries=0, timeout=20)


def test_openai_tool_call_round_trip_streamed_and_not(live_server, secret):
    client = oai(live_server, secret)
    messages = [{"role": "user", "content": "What is the weather in Madrid today?"}]
    first = client.chat.completions.create(model=SMALL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert call.function.name == "get_weather" and arguments["city"] == "Madrid"

    # The SDK's stream helper accumulates the tool call deltas into the same call.
    with client.chat.completions.stream(model=SMALL, messages=messages, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 31, "sky": "clear"})},
    ]
    answer = client.chat.completions.create(model=SMALL, messages=messages, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    assert '"temperature": 31' in answer.choices[0].message.content
    # Every call and answer is counted: the tool call's tokens are completion tokens.
    assert first.usage.completion_tokens > 0
    assert UsageRecord.objects.count() == 3


def test_openai_parse_returns_pydantic_objects(live_server, secret):
    client = oai(live_server, secret)
    completion = client.chat.completions.parse(
        model=SMALL,
        messages=[{"role": "user", "content": "A vegetarian lasagne recipe, please"}],
        response_format=Recipe,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Recipe) and parsed.ingredients
    assert all(1 <= i.grams <= 1000 for i in parsed.ingredients)

    # A strict pydantic tool: parse() also returns the arguments as the pydantic model.
    tooled = client.chat.completions.parse(
        model=SMALL,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
    )
    parsed_call = tooled.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed_call, GetWeather) and parsed_call.city == "Rome"


def test_openai_n_stop_logprobs_and_unknown_parameter(live_server, secret):
    client = oai(live_server, secret)
    question = [{"role": "user", "content": "Tell me about llamas and alpacas."}]
    three = client.chat.completions.create(model=SMALL, messages=question, n=3, max_tokens=40)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) == 3

    full = client.chat.completions.create(model=SMALL, messages=question).choices[0].message.content
    word = full.split()[3]
    cut = client.chat.completions.create(model=SMALL, messages=question, stop=[word])
    assert cut.choices[0].message.content == full[: full.index(word)]
    assert word not in cut.choices[0].message.content

    with_logprobs = client.chat.completions.create(
        model=SMALL, messages=question, logprobs=True, top_logprobs=2, max_tokens=10
    )
    tokens = with_logprobs.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == with_logprobs.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SMALL, messages=question, extra_body={"best_of": 2})
    assert refused.value.param == "best_of" and "best_of" in refused.value.message

    moderation = client.moderations.create(input="I will kill someone tonight")
    assert moderation.results[0].flagged and moderation.results[0].categories.violence


def test_llama_tool_call_round_trip_and_structured_output(live_server, secret):
    client = llama(live_server, secret)
    messages = [{"role": "user", "content": "What is the weather in Nairobi?"}]
    first = client.chat.completions.create(model=SMALL, messages=messages, tools=[WEATHER])
    message = first.completion_message
    assert message.stop_reason == "tool_calls"
    [call] = message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)

    streamed = list(client.chat.completions.create(model=SMALL, messages=messages, tools=[WEATHER], stream=True))
    deltas = [c.event.delta for c in streamed if c.event.event_type == "progress"]
    assert deltas[0].type == "tool_call" and deltas[0].id == call.id and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [c.event.stop_reason for c in streamed if c.event.event_type == "complete"] == ["tool_calls"]

    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Rain, 18 degrees"},
    ]
    answer = client.chat.completions.create(model=SMALL, messages=messages, tools=[WEATHER])
    assert answer.completion_message.stop_reason == "stop"
    assert "The get_weather tool returned: Rain, 18 degrees." in answer.completion_message.content.text

    structured = client.chat.completions.create(
        model=SMALL,
        messages=[{"role": "user", "content": "A dessert recipe"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "recipe", "schema": Recipe.model_json_schema()},
        },
    )
    recipe = Recipe.model_validate_json(structured.completion_message.content.text)
    assert recipe.ingredients

    with pytest.raises(llama_api_client.BadRequestError) as refused:
        client.chat.completions.create(model=SMALL, messages=messages[:1], extra_body={"n": 2})
    assert refused.value.body["error"]["param"] == "n"
