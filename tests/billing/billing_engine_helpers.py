"""Helpers of the billing-engine tests (tests/billing/test_billing_engine.py, test_billing_stripe.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime

from django.db import connection

from accounts.models import Team
from tests.factories import SubscriptionFactory, UsageRecordFactory
from tiers.models import Subscription, Tier
from usage.models import UsageRecord


def team_on(tier: Tier, *, anchor: datetime, email: str | None = None, status: str = "active") -> Team:
    """A team (and its owner) subscribed to ``tier`` since ``anchor`` (first period), set up directly:
    for tests of what happens after a subscription exists, not of how it got there."""
    owner = {"team__owner__email": email} if email else {}
    return SubscriptionFactory(tier=tier, billing_anchor=anchor, status=status, **owner).team


def subscription_of(team: Team) -> Subscription:
    return Subscription.objects.select_related("tier", "pending_tier").get(team=team)


def usage(team: Team, tokens: int, at: datetime) -> UsageRecord:
    return UsageRecordFactory(team=team, prompt_tokens=tokens, created_at=at)


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
