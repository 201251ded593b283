"""Helpers of the billing-engine tests (tests/tiers/test_billing_engine.py, test_billing_stripe.py)."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from datetime import datetime

from django.db import connection

from accounts.models import Team
from accounts.selectors import team_for_user
from core.periods import period_bounds
from tiers.models import Subscription, Tier
from tiers.services import user_create
from usage.models import UsageRecord

_emails = itertools.count(1)
_requests = itertools.count(1)


def team_on(tier: Tier, *, anchor: datetime, email: str | None = None, status: str = "active") -> Team:
    """A verified user's personal team, subscribed to ``tier`` since ``anchor`` (first period), set up
    directly: for tests of what happens after a subscription exists, not of how it got there."""
    user = user_create(email=email or f"subscriber{next(_emails)}@example.com", password="correct-horse-battery-9")
    team = team_for_user(user=user)
    start, end = period_bounds(anchor, tier.billing_interval, 0)
    Subscription.objects.filter(team=team).update(
        tier=tier, status=status, billing_anchor=anchor, current_period_start=start, current_period_end=end
    )
    return team


def subscription_of(team: Team) -> Subscription:
    return Subscription.objects.select_related("tier", "pending_tier").get(team=team)


def usage(team: Team, tokens: int, at: datetime) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=f"req-{next(_requests)}",
        team=team,
        model="Llama-3.3-70B-Instruct",
        prompt_tokens=tokens,
        completion_tokens=0,
        total_tokens=tokens,
        created_at=at,
    )


def run_in_threads(targets: list[Callable[[], object]], *, timeout: float = 60) -> list[object]:
    """Run the callables at the same moment, each in a thread with its own database connection; returns
    what each returned (or raised)."""
    barrier = threading.Barrier(len(targets))
    outcomes: list[object] = [None] * len(targets)

    def run(index: int, target: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout)
            outcomes[index] = target()
        except Exception as exc:
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, t), daemon=True) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a billing thread did not finish"
    return outcomes


def localstripe_payment_intents(base_url: str) -> list[dict]:
    """Every PaymentIntent localstripe holds (it ignores the customer filter; it pages by 100)."""
    from tests.stripe_fixtures import localstripe_request

    intents: list[dict] = []
    starting_after = ""
    while True:
        path = "/v1/payment_intents?limit=100" + (f"&starting_after={starting_after}" if starting_after else "")
        page = json.loads(localstripe_request(base_url, "GET", path))
        intents.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            return intents
        starting_after = page["data"][-1]["id"]


def payment_intents_for_invoice(base_url: str, invoice_id: int) -> list[dict]:
    return [pi for pi in localstripe_payment_intents(base_url) if pi["metadata"].get("invoice_id") == str(invoice_id)]
