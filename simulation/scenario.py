"""Scenario files: TOML (read with ``tomllib``), validated before anything runs or is written.

A scenario describes the business to run forward: when and for how long, the tier catalog (changes to
the seeded one, new tiers, dated price changes, model releases), segments of teams with their
traffic and behaviour, hosting partners with their share rates, and licensees with their monthly
active users. The format, key by key, is ``SCHEMA`` below; README.md ("The simulator") shows it.

Validation stops at the first problem and says where it is, as a key path
(``segments[1].traffic.requests_per_day``), what was found and what is allowed. Unknown keys are
errors, not ignored: a misspelt ``churn_per_mont`` would otherwise silently run the default.

Probabilities per month are turned into per-day ones by the engine; "growth" is multiplicative per
month (0.05 = +5% a month); money is integer cents, like everywhere in TierLab.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from simulation.schema import MAX_MONTHS, SCENARIO_KEYS, ScenarioError, _table
from tiers import catalog as seed_catalog
from tiers.models import Tier

__all__ = ["MAX_MONTHS", "Scenario", "ScenarioError", "scenario_load", "scenario_parse"]

# --- The scenario as values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TierSpec:
    """A tier of the run's catalog: a seed tier's values with the scenario's changes, or a new one.
    ``reference_price_cents`` is what price elasticity compares against: the seed catalog's price for a
    seed tier (so a scenario that raises it sees the response), the tier's own price for a new one."""

    slug: str
    values: dict[str, Any]
    models: tuple[str, ...]
    is_new: bool
    reference_price_cents: int


@dataclass(frozen=True)
class TierChange:
    date: dt.date
    tier: str
    values: dict[str, Any]


@dataclass(frozen=True)
class ModelRelease:
    model_id: str
    display_name: str
    released_on: dt.date
    tiers: tuple[str, ...]


@dataclass(frozen=True)
class Traffic:
    requests_per_day: float
    tokens_per_request: int
    prompt_share: float
    growth_per_month: float
    weekend_factor: float
    active_hours: float
    daily_variation: float
    team_variation: float
    model: str | None


@dataclass(frozen=True)
class Behaviour:
    ladder: tuple[str, ...]
    upgrade_when_refused: float
    upgrade_near_limit: float
    downgrade_per_month: float
    churn_per_month: float
    price_elasticity: float
    trial_conversion: float
    card_failure_per_month: float
    fix_card_in_dunning: float
    refund_on_churn: float
    spend_cap_share: float
    spend_cap_multiple: float


@dataclass(frozen=True)
class Segment:
    name: str
    start_tier: str
    initial_teams: int
    arrivals_per_month: float
    failing_card_share: float
    traffic: Traffic
    behaviour: Behaviour


@dataclass(frozen=True)
class PartnerSpec:
    slug: str
    name: str
    share_bps: int
    customers: int
    tokens_per_customer_per_day: int
    price_cents_per_million_tokens: int
    growth_per_month: float
    daily_variation: float
    model: str
    share_changes: tuple[tuple[dt.date, int], ...]


@dataclass(frozen=True)
class LicenseeSpec:
    name: str
    mau_start: int
    mau_growth_per_month: float
    request_after_days: int
    grant_after_days: int
    monthly_fee_cents: int


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    start: dt.date
    months: int
    tiers: dict[str, TierSpec]
    tier_changes: tuple[TierChange, ...]
    models: tuple[ModelRelease, ...]
    segments: tuple[Segment, ...]
    partners: tuple[PartnerSpec, ...]
    licensees: tuple[LicenseeSpec, ...]
    source: str = field(default="", repr=False)  # the TOML text, echoed in the report

    @property
    def end(self) -> dt.date:
        """The first day after the run (exclusive)."""
        from core.periods import add_months

        return add_months(self.start, self.months)

    @property
    def month_names(self) -> list[str]:
        from core.periods import add_months

        return [f"{add_months(self.start, i):%Y-%m}" for i in range(self.months)]


# --- Loading --------------------------------------------------------------------------------------------


def scenario_load(path: str | Path) -> Scenario:
    """Read and validate the scenario at ``path``. Raises ScenarioError naming the key path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("", f"cannot read {path}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError("", f"{path} is not UTF-8 text.") from exc
    return scenario_parse(text, default_name=path.stem)


def scenario_parse(text: str, *, default_name: str = "scenario") -> Scenario:
    """Validate TOML ``text`` as a scenario (see the module docstring)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"not valid TOML: {exc}.") from exc
    data = _table(raw, SCENARIO_KEYS, "")
    head = data["scenario"]
    start: dt.date = head["start"]
    if start.day != 1:
        raise ScenarioError(
            "scenario.start", f"must be the first day of a month (runs count calendar months); got {start}."
        )
    if not dt.date(2000, 1, 1) <= start <= dt.date(2200, 1, 1):
        raise ScenarioError("scenario.start", f"must be between 2000-01-01 and 2200-01-01; got {start}.")
    months: int = head["months"]
    from core.periods import add_months

    end = add_months(start, months)
    models = _models(data["catalog"]["models"])
    model_ids = {m["model_id"] for m in seed_catalog.SEED_MODELS} | {m.model_id for m in models}
    tiers = _tiers(data["catalog"]["tiers"], model_ids=model_ids)
    for index, release in enumerate(models):
        for j, slug in enumerate(release.tiers):
            if slug not in tiers:
                raise ScenarioError(f"catalog.models[{index}].tiers[{j}]", _unknown_tier(slug, tiers))
    changes = _tier_changes(data["catalog"]["changes"], tiers=tiers, start=start, end=end)
    segments = _segments(data["segments"], tiers=tiers, model_ids=model_ids)
    partners = _partners(data["partners"], start=start, end=end, model_ids=model_ids)
    licensees = tuple(LicenseeSpec(**item) for item in data["licensees"])
    _unique([lic.name for lic in licensees], "licensees", "name")
    return Scenario(
        name=head["name"] or _slugify(default_name),
        description=head["description"],
        start=start,
        months=months,
        tiers=tiers,
        tier_changes=changes,
        models=models,
        segments=segments,
        partners=partners,
        licensees=licensees,
        source=text,
    )


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50]
    return slug or "scenario"


def _unique(names: list[str], path: str, key: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise ScenarioError(f"{path}[{index}].{key}", f"{name!r} is used twice; names must be unique.")
        seen.add(name)


def _unknown_tier(slug: str, tiers: Mapping[str, TierSpec]) -> str:
    return f"unknown tier {slug!r}; the catalog has: {', '.join(tiers)}."


def _models(items: tuple[dict, ...]) -> tuple[ModelRelease, ...]:
    seed = {m["model_id"] for m in seed_catalog.SEED_MODELS}
    releases = []
    for index, item in enumerate(items):
        if item["model_id"] in seed or item["model_id"] in {r.model_id for r in releases}:
            raise ScenarioError(f"catalog.models[{index}].model_id", f"{item['model_id']!r} exists already.")
        releases.append(
            ModelRelease(
                model_id=item["model_id"],
                display_name=item["display_name"] or item["model_id"],
                released_on=item["released_on"],
                tiers=item["tiers"],
            )
        )
    return tuple(releases)


def _tier_check(values: dict[str, Any], path: str) -> None:
    """The catalog's own rules (Tier.clean: paid iff priced, overage needs a price and included tokens,
    no trial on a free tier...), checked on an unsaved Tier, reported at the scenario's key path."""
    tier = Tier(**{k: v for k, v in values.items() if k != "slug"}, slug=values["slug"])
    try:
        tier.clean_fields(exclude=["slug", "description"])
        tier.clean()
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        name, messages = next(iter(errors.items()))
        where = f"{path}.{name}" if name and name != "__all__" else path
        raise ScenarioError(where, " ".join(messages)) from exc


def _tiers(items: dict[str, dict], *, model_ids: set[str]) -> dict[str, TierSpec]:
    seed = {spec["slug"]: spec for spec in seed_catalog.SEED_TIERS}
    tiers: dict[str, TierSpec] = {}
    for spec in seed_catalog.SEED_TIERS:
        if spec["slug"] not in items:
            values = {k: v for k, v in spec.items() if k != "models"}
            tiers[spec["slug"]] = TierSpec(spec["slug"], values, tuple(spec["models"]), False, spec["price_cents"])
    for slug, given in items.items():
        path = f"catalog.tiers.{slug}"
        changes = {k: v for k, v in given.items() if v is not None and k != "models"}
        if slug in seed:
            values = {k: v for k, v in seed[slug].items() if k != "models"} | changes
            models = given["models"] if given["models"] is not None else tuple(seed[slug]["models"])
            reference = seed[slug]["price_cents"]
        else:
            for required in ("name", "price_cents"):
                if given[required] is None:
                    raise ScenarioError(f"{path}.{required}", "is required for a new tier.")
            values = {"slug": slug, **changes}
            models = given["models"] or ()
            reference = changes["price_cents"]
        values["is_paid"] = values.get("price_cents", 0) > 0
        for index, model in enumerate(models):
            if model not in model_ids:
                raise ScenarioError(
                    f"{path}.models[{index}]", f"unknown model {model!r}; known: {', '.join(sorted(model_ids))}."
                )
        _tier_check(values, path)
        tiers[slug] = TierSpec(slug, values, tuple(models), slug not in seed, reference)
    if seed_catalog.FREE_TIER_SLUG not in tiers or tiers[seed_catalog.FREE_TIER_SLUG].values["price_cents"]:
        raise ScenarioError(
            f"catalog.tiers.{seed_catalog.FREE_TIER_SLUG}.price_cents", "the free tier must stay free (0)."
        )
    return tiers


def _tier_changes(
    items: tuple[dict, ...], *, tiers: dict[str, TierSpec], start: dt.date, end: dt.date
) -> tuple[TierChange, ...]:
    changes = []
    for index, item in enumerate(items):
        path = f"catalog.changes[{index}]"
        if item["tier"] not in tiers:
            raise ScenarioError(f"{path}.tier", _unknown_tier(item["tier"], tiers))
        if not start < item["date"] < end:
            raise ScenarioError(
                f"{path}.date", f"must fall inside the run, after {start} and before {end}; got {item['date']}."
            )
        values = {k: v for k, v in item.items() if k not in ("date", "tier") and v is not None}
        if not values:
            raise ScenarioError(path, "changes nothing: give at least one tier field, e.g. price_cents.")
        merged = dict(tiers[item["tier"]].values)
        for earlier in changes:
            if earlier.tier == item["tier"] and earlier.date <= item["date"]:
                merged |= earlier.values
        merged |= values
        merged["is_paid"] = merged.get("price_cents", 0) > 0
        if merged["is_paid"] != tiers[item["tier"]].values["is_paid"]:
            raise ScenarioError(f"{path}.price_cents", "a change cannot turn a free tier into a paid one or back.")
        _tier_check(merged, path)
        changes.append(TierChange(date=item["date"], tier=item["tier"], values=values))
    return tuple(sorted(changes, key=lambda c: (c.date, c.tier)))


def _segments(items: tuple[dict, ...], *, tiers: dict[str, TierSpec], model_ids: set[str]) -> tuple[Segment, ...]:
    if not items:
        raise ScenarioError("segments", "give at least one segment ([[segments]]).")
    _unique([item["name"] for item in items], "segments", "name")
    # The default ladder: the public tiers with API access (the population calls the model API; a
    # playground-only consumer tier, like the seed's Assistant, is on a ladder only when a segment names it).
    public_ladder = tuple(
        slug
        for slug, spec in sorted(tiers.items(), key=lambda kv: (kv[1].values.get("price_cents", 0), kv[0]))
        if spec.values.get("is_public", True) and spec.values.get("includes_api_access", True)
    )
    segments = []
    for index, item in enumerate(items):
        path = f"segments[{index}]"
        if item["start_tier"] not in tiers:
            raise ScenarioError(f"{path}.start_tier", _unknown_tier(item["start_tier"], tiers))
        behaviour = dict(item["behaviour"])
        ladder = behaviour["ladder"] or public_ladder
        for j, slug in enumerate(ladder):
            if slug not in tiers:
                raise ScenarioError(f"{path}.behaviour.ladder[{j}]", _unknown_tier(slug, tiers))
        behaviour["ladder"] = tuple(ladder)
        traffic = item["traffic"]
        if traffic["model"] is not None and traffic["model"] not in model_ids:
            raise ScenarioError(
                f"{path}.traffic.model", f"unknown model {traffic['model']!r}; known: {', '.join(sorted(model_ids))}."
            )
        segments.append(
            Segment(
                name=item["name"],
                start_tier=item["start_tier"],
                initial_teams=item["initial_teams"],
                arrivals_per_month=float(item["arrivals_per_month"]),
                failing_card_share=float(item["failing_card_share"]),
                traffic=Traffic(
                    **{
                        k: (float(v) if isinstance(v, int) and k != "tokens_per_request" else v)
                        for k, v in traffic.items()
                    }
                ),
                behaviour=Behaviour(**{k: (float(v) if isinstance(v, int) else v) for k, v in behaviour.items()}),
            )
        )
    return tuple(segments)


def _partners(items: tuple[dict, ...], *, start: dt.date, end: dt.date, model_ids: set[str]) -> tuple[PartnerSpec, ...]:
    _unique([item["slug"] for item in items], "partners", "slug")
    partners = []
    for index, item in enumerate(items):
        path = f"partners[{index}]"
        if item["model"] not in model_ids:
            raise ScenarioError(
                f"{path}.model", f"unknown model {item['model']!r}; known: {', '.join(sorted(model_ids))}."
            )
        previous = start
        changes = []
        for j, change in enumerate(item["share_changes"]):
            if change["date"] <= previous:
                what = (
                    f"the run's start ({start}), when share_bps starts"
                    if previous == start
                    else f"the previous change ({previous})"
                )
                raise ScenarioError(
                    f"{path}.share_changes[{j}].date",
                    f"{change['date']} overlaps {what}: share-rate dates must come after it, in increasing order.",
                )
            if change["date"] >= end:
                raise ScenarioError(
                    f"{path}.share_changes[{j}].date", f"must be before the run ends ({end}); got {change['date']}."
                )
            previous = change["date"]
            changes.append((change["date"], change["share_bps"]))
        partners.append(
            PartnerSpec(**{k: v for k, v in item.items() if k != "share_changes"}, share_changes=tuple(changes))
        )
    return tuple(partners)
