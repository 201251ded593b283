"""Django-side helpers of bench/api_overhead.py, run in a subprocess with the project's virtualenv:

    .venv/bin/python -m bench._django_tasks setup  --spec '{"run_id": ..., "keys": [...], "race_keys": [...],
                                                           "race_quota": 100}'
    .venv/bin/python -m bench._django_tasks drain
    .venv/bin/python -m bench._django_tasks drain-loop --interval 2
    .venv/bin/python -m bench._django_tasks verify --spec '{"keys": [...], "redis_url": ...}'

The environment (DATABASE_URL, REDIS_URL, TIERLAB_QUOTA_BACKEND, ...) comes from the caller; the settings
are always ``config.settings``. Each command prints one JSON object alone on its last line of stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time

BENCH_TIER = "bench-high-limits"
RACE_TIER = "bench-race"
# Every limit applies and is enforced (a hard monthly cap), so the metered path does all its work
# (four counters, four pairs of headers), but none can refuse during a run: PositiveIntegerField's
# ceiling for the per-minute/day limits, 10^15 tokens a month.
BENCH_TIER_LIMITS = {
    "requests_per_minute": 2_000_000_000,
    "tokens_per_minute": 2_000_000_000,
    "requests_per_day": 2_000_000_000,
    "monthly_tokens": 10**15,
}


def _django() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"  # never an inherited test or baseline module
    import django

    django.setup()


def _emit(payload: dict) -> None:
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _tier_ensure(slug: str, name: str, description: str, limits: dict):
    """The bench's own tier (not public, free, every model), created once per database."""
    from tiers.models import LanguageModel, Tier

    tier = Tier.objects.filter(slug=slug).first()
    if tier is None:
        tier = Tier(
            slug=slug,
            name=name,
            description=description,
            sort_order=900,
            is_paid=False,
            price_cents=0,
            is_public=False,
            overage_policy=Tier.OveragePolicy.BLOCK,
            **limits,
        )
        tier.full_clean()
        tier.save()
        tier.allowed_models.set(LanguageModel.objects.filter(is_active=True))
    return tier


def setup(spec: dict) -> dict:
    """Migrate, seed the catalog, make sure the bench tiers exist, and create one user + personal team
    + API key per requested label through the project's services (so counts per key are separable):
    ``keys`` on the high-limits tier, ``race_keys`` on the race tier (``race_quota`` requests a day)."""
    _django()
    from django.core.management import call_command

    from accounts.selectors import team_for_user
    from accounts.services import api_key_create
    from tiers.services import user_create

    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_tiers", stdout=io.StringIO())
    _tier_ensure(BENCH_TIER, "Bench (high limits)", "bench/api_overhead.py: every limit enforced, none reachable.",
                 BENCH_TIER_LIMITS)  # fmt: skip
    race_quota = int(spec.get("race_quota") or 0)
    if race_quota:
        _tier_ensure(RACE_TIER, f"Bench race ({race_quota} requests a day)",
                     "bench/api_overhead.py: a quota that concurrent clients race for.",
                     {**BENCH_TIER_LIMITS, "requests_per_day": race_quota})  # fmt: skip
    wanted = [(label, BENCH_TIER) for label in spec["keys"]]
    wanted += [(label, RACE_TIER) for label in spec.get("race_keys", [])]
    keys = {}
    for label, tier_slug in wanted:
        user = user_create(email=f"bench-{spec['run_id']}-{label}@bench.tierlab.localhost", tier_slug=tier_slug)
        key, secret = api_key_create(team=team_for_user(user=user), name=f"bench {label}")
        keys[label] = {"secret": secret, "key_id": key.id, "team_id": key.team_id}
    pools = _pool_create(spec, keys) if int(spec.get("teams") or 1) > 1 else {}
    import django
    import redis.utils
    from django.db import connection

    return {
        "keys": keys,
        "pools": pools,
        "versions": {
            "django": django.get_version(),
            "redis-py": redis.__version__,
            "hiredis": redis.utils.HIREDIS_AVAILABLE,
            "database": connection.vendor
            + (f" {connection.Database.sqlite_version}" if connection.vendor == "sqlite" else ""),
        },
    }


def _pool_create(spec: dict, keys: dict) -> dict:
    """``--teams N``: per quota backend, N teams on the high-limits tier, each with one key per label of
    the runs that backend meters (``pool_labels``: backend -> labels), so a run's keys spread over N
    teams and each run's records stay separable. Apart per backend: the Redis backend seeds a team's
    monthly counter from its usage records, which would include the other backend's. Made in bulk
    (user_create + api_key_create per team would take minutes for 10,000), as copies of the first
    label's team's subscription; the keys have the scheme api_key_create gives them (accounts.services:
    a random secret, its prefix in the clear, its SHA-256). Returns per backend its team ids, per label
    its secrets and key ids."""
    import secrets as secrets_module

    from django.db import transaction

    from accounts.models import ApiKey, Team
    from accounts.services import API_KEY_MARKER, API_KEY_PREFIX_LENGTH, api_key_hash
    from tiers.models import Subscription

    teams_wanted = int(spec["teams"])
    template = Subscription.objects.current().get(team_id=keys[spec["keys"][0]]["team_id"])
    run_id = spec["run_id"]
    teams_by_backend, labels = {}, {}
    with transaction.atomic():
        for backend, backend_labels in spec.get("pool_labels", {}).items():
            teams = Team.objects.bulk_create(
                [
                    Team(name=f"bench pool {backend} {i}", slug=f"bp-{run_id}-{backend}-{i}")
                    for i in range(teams_wanted)
                ],
                batch_size=2000,
            )
            if any(team.pk is None for team in teams):  # SQLite and PostgreSQL both return the ids
                raise RuntimeError("bulk_create returned no ids")
            Subscription.objects.bulk_create(
                [
                    Subscription(
                        team=team,
                        tier_id=template.tier_id,
                        status=template.status,
                        billing_anchor=template.billing_anchor,
                        current_period_start=template.current_period_start,
                        current_period_end=template.current_period_end,
                    )
                    for team in teams
                ],
                batch_size=2000,
            )
            teams_by_backend[backend] = [team.pk for team in teams]
            for label in backend_labels:
                raws = [API_KEY_MARKER + secrets_module.token_urlsafe(34) for _ in teams]
                created = ApiKey.objects.bulk_create(
                    [
                        ApiKey(
                            team=team,
                            name=f"bench {label}",
                            prefix=raw[:API_KEY_PREFIX_LENGTH],
                            secret_hash=api_key_hash(raw),
                            scopes=["model", "read"],
                        )
                        for team, raw in zip(teams, raws, strict=True)
                    ],
                    batch_size=2000,
                )
                labels[label] = {"secrets": raws, "key_ids": [key.pk for key in created]}
    _pool_prime(teams_by_backend)
    return {"team_ids": teams_by_backend, "labels": labels}


def _pool_prime(teams_by_backend: dict[str, list[int]]) -> None:
    """The steady state of N active teams, not their first request ever: each pool team's quota state
    exists before the measured runs, as it does for a team that has made requests before (the database
    backend's TeamQuotaState row, made on a team's first request; the Redis backend's monthly counter,
    initialised from the team's recorded usage on its first request of the period: none here)."""
    from django.utils import timezone

    from tiers.selectors import entitlements_for_teams
    from usage import metering
    from usage.models import TeamQuotaState
    from usage.quotas.base import LimitName
    from usage.quotas.database import _EPOCH
    from usage.quotas.redis import RedisQuotaBackend

    now = timezone.now()
    if "database" in teams_by_backend:
        TeamQuotaState.objects.bulk_create(
            [
                TeamQuotaState(team_id=team_id, minute_start=_EPOCH, day_start=_EPOCH, period_start=_EPOCH)
                for team_id in teams_by_backend["database"]
            ],
            batch_size=2000,
            ignore_conflicts=True,
        )
    if "redis" in teams_by_backend:
        backend = RedisQuotaBackend(url=os.environ["REDIS_URL"])
        for team_id, entitlements in entitlements_for_teams(team_ids=teams_by_backend["redis"]).items():
            limits = metering.limits_for(entitlements=entitlements, now=now)
            monthly = next(limit for limit in limits if limit.name is LimitName.MONTHLY_TOKENS)
            backend._period_initialise(team_id=team_id, limit=monthly, now=now)
        backend.close()


def drain() -> dict:
    """The Celery task's body, run in-process: the Redis stream into UsageRecord."""
    _django()
    from usage.tasks import usage_stream_drain

    started = time.monotonic()
    written = 0
    while True:  # the task returns when caught up; one more pass proves it
        batch = usage_stream_drain()
        written += batch
        if batch == 0:
            break
    return {"written": written, "seconds": round(time.monotonic() - started, 3)}


def drain_loop(interval: float) -> dict:
    """What beat + a worker do in production: drain every ``interval`` seconds, until SIGTERM."""
    _django()
    from usage.tasks import usage_stream_drain

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    written = passes = 0
    while not stop["now"]:
        written += usage_stream_drain()
        passes += 1
        deadline = time.monotonic() + interval
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.05)
    return {"written": written, "passes": passes}


def verify(spec: dict) -> dict:
    """Per key: usage records (count, tokens) and the quota backend's counters of today's window
    (requests per day = requests admitted today) from the backend that metered it."""
    _django()
    from django.db.models import Count, Sum
    from django.utils import timezone

    from tiers.selectors import entitlements_for_team, entitlements_for_teams
    from usage import metering
    from usage.models import UsageRecord
    from usage.quotas.base import LimitName
    from usage.quotas.database import DatabaseQuotaBackend
    from usage.quotas.redis import RedisQuotaBackend

    backends = {"database": DatabaseQuotaBackend(), "redis": RedisQuotaBackend(url=spec["redis_url"])}
    now = timezone.now()
    result = {}
    for label, info in spec["keys"].items():
        key_ids = info.get("key_ids") or [info["key_id"]]
        rows = UsageRecord.objects.filter(api_key_id__in=key_ids).aggregate(n=Count("id"), tokens=Sum("total_tokens"))
        entry = {"records": rows["n"], "record_tokens": int(rows["tokens"] or 0)}
        backend_name = info.get("backend")
        if backend_name and not info.get("key_ids"):  # a pool's counters are summed per backend, below
            entitlements = entitlements_for_team(team_id=info["team_id"])
            limits = metering.limits_for(entitlements=entitlements, now=now)
            used = backends[backend_name].used(team_id=info["team_id"], limits=limits)
            entry["counter_requests_today"] = used.get(LimitName.REQUESTS_PER_DAY)
            entry["counter_tokens_period"] = used.get(LimitName.MONTHLY_TOKENS)
        result[label] = entry
    pools = {}
    for backend_name, pool in (spec.get("pools") or {}).items():
        # Per backend, over the pool's teams: the counters of every run that backend metered. The teams'
        # entitlements in two queries, not 10,000 (bench/api_overhead.py --caches warm reads them per run).
        requests = tokens = 0
        for team_id, entitlements in sorted(entitlements_for_teams(team_ids=pool["team_ids"]).items()):
            limits = metering.limits_for(entitlements=entitlements, now=now)
            used = backends[backend_name].used(team_id=team_id, limits=limits)
            requests += used.get(LimitName.REQUESTS_PER_DAY) or 0
            tokens += used.get(LimitName.MONTHLY_TOKENS) or 0
        pools[backend_name] = {"counter_requests_today": requests, "counter_tokens_period": tokens}
    backends["redis"].close()
    return {"keys": result, "pools": pools}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "drain", "drain-loop", "verify"])
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    spec = json.loads(open(args.spec[1:]).read() if args.spec.startswith("@") else args.spec)  # noqa: SIM115
    if args.command == "setup":
        _emit(setup(spec))
    elif args.command == "drain":
        _emit(drain())
    elif args.command == "drain-loop":
        _emit(drain_loop(args.interval))
    else:
        _emit(verify(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
