"""The scenario file's schema: every key, its kind, bounds and default, and the checker that walks a
parsed TOML document against it, raising ScenarioError with the key path of the first problem
(simulation/scenario.py builds the scenario's values from what it returns)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tiers import catalog as seed_catalog

MAX_MONTHS = 36  # the operator analytics' longest window (billing.analytics.MAX_MONTHS)
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ScenarioError(Exception):
    """A scenario that cannot run: ``path`` names the key (``segments[0].traffic.model``), ``message``
    says what is wrong and what is allowed."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# --- The schema ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key of a table: its kind, whether it is required, its default and bounds.

    Kinds: ``int`` (a TOML integer), ``number`` (integer or float), ``probability`` (a number from 0
    to 1), ``str``, ``slug``, ``model``, ``date`` (a TOML date, e.g. ``2026-01-01``), ``bool``,
    ``slugs`` / ``models`` (arrays of those), ``table`` (with ``keys``), ``tables`` (an array of
    tables, ``[[...]]``) and ``map`` (a table of tables keyed by slug, e.g. ``[catalog.tiers.plus]``).
    """

    kind: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    keys: Mapping[str, Key] | None = None
    help: str = ""


def _probability(help_: str, default: float = 0.0) -> Key:
    return Key("probability", default=default, minimum=0, maximum=1, help=help_)


TIER_KEYS: dict[str, Key] = {
    "name": Key("str", help="Display name; required for a new tier."),
    "description": Key("str"),
    "sort_order": Key("int", minimum=0, maximum=32767),
    "price_cents": Key("int", minimum=0, help="Fee per billing interval in cents; required for a new tier."),
    "billing_interval": Key("str", choices=("month", "year")),
    "trial_days": Key("int", minimum=0, maximum=365),
    "requests_per_minute": Key("int", minimum=0),
    "tokens_per_minute": Key("int", minimum=0),
    "requests_per_day": Key("int", minimum=0),
    "monthly_tokens": Key("int", minimum=0),
    "overage_policy": Key("str", choices=("block", "bill")),
    "overage_cents_per_million_tokens": Key("int", minimum=1),
    "is_public": Key("bool"),
    "models": Key("models", help="Model ids the tier may call."),
}
# A dated change of a tier: any of its fields except the model list.
TIER_CHANGE_KEYS: dict[str, Key] = {
    "date": Key("date", required=True),
    "tier": Key("slug", required=True),
    **{name: key for name, key in TIER_KEYS.items() if name not in ("models", "name", "description", "sort_order")},
}
MODEL_KEYS: dict[str, Key] = {
    "model_id": Key("model", required=True),
    "display_name": Key("str"),
    "released_on": Key("date", required=True),
    "tiers": Key("slugs", default=(), help="Tiers that include the model from the start."),
}
TRAFFIC_KEYS: dict[str, Key] = {
    "requests_per_day": Key("number", required=True, minimum=0, help="A team's mean requests per weekday."),
    "tokens_per_request": Key("int", required=True, minimum=1, maximum=1_000_000),
    "prompt_share": Key("probability", default=0.75, minimum=0, maximum=1, help="Share of tokens in the prompt."),
    "growth_per_month": Key("number", default=0.0, minimum=-0.99, maximum=10, help="Multiplicative, per month."),
    "weekend_factor": Key("number", default=1.0, minimum=0, maximum=10, help="Saturday and Sunday traffic x this."),
    "active_hours": Key("number", default=8, minimum=1, maximum=24, help="Hours a day the traffic is spread over."),
    "daily_variation": Key("number", default=0.0, minimum=0, maximum=3, help="Sigma of the day-to-day lognormal."),
    "team_variation": Key("number", default=0.0, minimum=0, maximum=3, help="Sigma of the per-team lognormal."),
    "model": Key("model", help="Default: the first model the tier allows."),
}
BEHAVIOUR_KEYS: dict[str, Key] = {
    "ladder": Key(
        "slugs", help="Tiers the segment moves along, cheapest first (default: the public tiers with API access)."
    ),
    "upgrade_when_refused": _probability("Per day after a day with refused requests."),
    "upgrade_near_limit": _probability("Per day while at 80% or more of the period's included tokens."),
    "downgrade_per_month": _probability("A paying team moves one step down the ladder."),
    "churn_per_month": _probability("A paying team cancels and leaves."),
    "price_elasticity": Key("number", default=0.0, minimum=0, maximum=10),
    "trial_conversion": _probability("Share of trials that become paying.", default=1.0),
    "card_failure_per_month": _probability("A paying team's card starts failing (dunning)."),
    "fix_card_in_dunning": _probability("Per day while past due: the team puts a working card on file."),
    "refund_on_churn": _probability("A churning team's last payment is refunded by an operator."),
    "spend_cap_share": _probability("Share of teams on overage tiers that set a hard spend cap."),
    "spend_cap_multiple": Key("number", default=2.0, minimum=1, maximum=1000, help="The cap as a multiple of the fee."),
}
SEGMENT_KEYS: dict[str, Key] = {
    "name": Key("slug", required=True),
    "start_tier": Key("slug", default=seed_catalog.FREE_TIER_SLUG),
    "initial_teams": Key("int", default=0, minimum=0, maximum=1_000_000),
    "arrivals_per_month": Key("number", default=0.0, minimum=0, maximum=1_000_000),
    "failing_card_share": _probability("Share of teams whose card fails every charge from the start."),
    "traffic": Key("table", required=True, keys=TRAFFIC_KEYS),
    "behaviour": Key("table", default={}, keys=BEHAVIOUR_KEYS),
}
SHARE_CHANGE_KEYS: dict[str, Key] = {
    "date": Key("date", required=True),
    "share_bps": Key("int", required=True, minimum=0, maximum=10_000),
}
PARTNER_KEYS: dict[str, Key] = {
    "slug": Key("slug", required=True),
    "name": Key("str", required=True),
    "share_bps": Key("int", required=True, minimum=0, maximum=10_000, help="1500 = 15%, from the start."),
    "customers": Key("int", required=True, minimum=0, maximum=100_000),
    "tokens_per_customer_per_day": Key("int", required=True, minimum=0),
    "price_cents_per_million_tokens": Key("int", required=True, minimum=0, help="What the partner bills."),
    "growth_per_month": Key("number", default=0.0, minimum=-0.99, maximum=10),
    "daily_variation": Key("number", default=0.0, minimum=0, maximum=3),
    "model": Key("model", default="Llama-3.3-70B-Instruct"),
    "share_changes": Key("tables", default=(), keys=SHARE_CHANGE_KEYS),
}
LICENSEE_KEYS: dict[str, Key] = {
    "name": Key("slug", required=True),
    "mau_start": Key("int", required=True, minimum=0, help="Monthly active users in the first month."),
    "mau_growth_per_month": Key("number", default=0.0, minimum=-0.99, maximum=10),
    "request_after_days": Key("int", default=7, minimum=0, maximum=365, help="Days from flagged to requested."),
    "grant_after_days": Key("int", default=14, minimum=0, maximum=365, help="Days from requested to granted."),
    "monthly_fee_cents": Key("int", required=True, minimum=0),
}
SCENARIO_KEYS: dict[str, Key] = {
    "scenario": Key(
        "table",
        required=True,
        keys={
            "name": Key("slug"),
            "description": Key("str", default=""),
            "start": Key("date", required=True, help="The first day of a month."),
            "months": Key("int", required=True, minimum=1, maximum=MAX_MONTHS),
        },
    ),
    "catalog": Key(
        "table",
        default={},
        keys={
            "tiers": Key("map", default={}, keys=TIER_KEYS),
            "changes": Key("tables", default=(), keys=TIER_CHANGE_KEYS),
            "models": Key("tables", default=(), keys=MODEL_KEYS),
        },
    ),
    "segments": Key("tables", required=True, keys=SEGMENT_KEYS),
    "partners": Key("tables", default=(), keys=PARTNER_KEYS),
    "licensees": Key("tables", default=(), keys=LICENSEE_KEYS),
}

_KIND_NAMES = {
    "int": "an integer",
    "number": "a number",
    "probability": "a number from 0 to 1",
    "str": "a string",
    "slug": "a slug (lower-case letters, digits and '-')",
    "model": "a model id (letters, digits, '.', '_' and '-')",
    "date": "a date (e.g. 2026-01-01, no quotes)",
    "bool": "true or false",
    "slugs": "an array of slugs",
    "models": "an array of model ids",
    "table": "a table",
    "tables": "an array of tables ([[...]])",
    "map": "a table of tables",
}


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _scalar(value: Any, key: Key, path: str) -> Any:
    kind = key.kind
    ok: Callable[[Any], bool] = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "probability": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "slug": lambda v: isinstance(v, str) and bool(SLUG.match(v)),
        "model": lambda v: isinstance(v, str) and bool(MODEL_ID.match(v)),
        "date": lambda v: isinstance(v, dt.date) and not isinstance(v, dt.datetime),
        "bool": lambda v: isinstance(v, bool),
    }[kind]
    if not ok(value):
        raise ScenarioError(path, f"must be {_KIND_NAMES[kind]}; got {value!r}.")
    if isinstance(value, float) and value != value:  # NaN
        raise ScenarioError(path, "must be a number; got nan.")
    if key.minimum is not None and value < key.minimum:
        raise ScenarioError(path, f"must be at least {key.minimum:g}; got {value!r}.")
    if key.maximum is not None and value > key.maximum:
        raise ScenarioError(path, f"must be at most {key.maximum:g}; got {value!r}.")
    if key.choices is not None and value not in key.choices:
        raise ScenarioError(path, f"must be one of {', '.join(map(repr, key.choices))}; got {value!r}.")
    return value


def _value(value: Any, key: Key, path: str) -> Any:
    if key.kind == "table":
        return _table(value, key.keys or {}, path)
    if key.kind == "tables":
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ScenarioError(path, f"must be {_KIND_NAMES['tables']}; got {value!r}.")
        return tuple(_table(item, key.keys or {}, _join(path, i)) for i, item in enumerate(value))
    if key.kind == "map":
        if not isinstance(value, dict):
            raise ScenarioError(path, f"must be {_KIND_NAMES['map']}; got {value!r}.")
        out = {}
        for name, item in value.items():
            _scalar(name, Key("slug"), _join(path, name))
            out[name] = _table(item, key.keys or {}, _join(path, name))
        return out
    if key.kind in ("slugs", "models"):
        if not isinstance(value, list):
            raise ScenarioError(path, f"must be {_KIND_NAMES[key.kind]}; got {value!r}.")
        item_key = Key(key.kind[:-1])
        return tuple(_scalar(item, item_key, _join(path, i)) for i, item in enumerate(value))
    return _scalar(value, key, path)


def _table(raw: Any, keys: Mapping[str, Key], path: str) -> dict[str, Any]:
    """``raw`` checked against ``keys``: unknown keys refused (naming the allowed ones), required keys
    present, each value of its kind and within its bounds; defaults filled in."""
    if not isinstance(raw, dict):
        raise ScenarioError(path, f"must be a table; got {raw!r}.")
    for name in raw:
        if name not in keys:
            raise ScenarioError(_join(path, name), f"unknown key; allowed here: {', '.join(keys)}.")
    out: dict[str, Any] = {}
    for name, key in keys.items():
        if name in raw:
            out[name] = _value(raw[name], key, _join(path, name))
        elif key.required:
            raise ScenarioError(_join(path, name), f"is required ({_KIND_NAMES[key.kind]}).")
        elif key.kind == "table" and key.default is not None:
            out[name] = _table(key.default, key.keys or {}, _join(path, name))
        else:
            out[name] = key.default
    return out
