"""The billing engine's shared parts: its errors, result types, constants and the small helpers every
topic uses. Every write of billing state goes through the engine, one module per topic, each importing
only the ones above it in this list (no cycles):

- ``billing.customers``: the Stripe customer and the card on file.
- ``billing.dunning``: what a failed renewal means (past due, retries, the end: written off, moved to
  free) and what settling it means (active again).
- ``billing.extra_charges``: a charge TierLab did not ask for (a second charge of one invoice, a charge
  of a void one), refunded automatically once.
- ``billing.payments``: charging an invoice, and a charge's outcome (from the call or a webhook) with
  what it means: a paid checkout invoice applies its tier change (``checkout_apply``), a failure
  voids a checkout invoice or is a dunning step.
- ``billing.checkout``: subscribing, changing tier (with proration), cancel and resume, an operator's
  tier move. It starts charges (payments), never applies them.
- ``billing.refunds``: refunds and comps.
- ``billing.run``: one pass of the engine (period close, charging what is due, ending dunning).
- ``billing.selectors``: the billing page's overview (reads only).

Who may (``billing_role_check``, the one check of billing): a team's owners, admins and billing members
see billing and invoices and change the subscription, the card and the spend cap; the other roles do
neither (accounts.roles). Every customer-facing service checks its ``actor``; the operators' services
(tier moves, comps, refunds, a cancel ``immediately``) are not a member's action and check nothing.

Time: every function that depends on time takes ``now`` (default ``timezone.now()``), so billing can
be run forward in simulated time without patching.
Exactly-once: invoices are unique on ``billing_key``; payments on (invoice, attempt) and on their
idempotency key; the period advance is a compare-and-set on the old period end.

How money moves (DESIGN.md, "Money and time"): TierLab decides what is owed (periods, proration,
invoices, dunning); Stripe only executes charges and refunds. The rules, and why:

- Checkout charges (an ``initial`` invoice for free -> paid, a ``proration`` invoice for an upgrade)
  are made while the customer waits. The subscription changes only once the charge has succeeded
  (``payments.payment_outcome_record`` applies it), so a decline leaves the subscription exactly as it was,
  with nothing to undo, and a crash between the charge and the local update is healed by whoever
  records the outcome later (the next pass, or the webhook). A checkout charge gets one attempt: a
  declined one voids its invoice, no dunning (the customer saw the error and can try another card).
- Renewals are charged off-session by ``run.billing_run`` and, when they fail, go through dunning:
  ``past_due`` at the first failure, retries TIERLAB_DUNNING_RETRY_DAYS after that first failure,
  and after the last retry the invoice is written off (uncollectible) and the team moved to the free
  tier. Nothing is deleted.
- A Payment row (pending) is committed BEFORE Stripe is called, carrying the attempt's idempotency key
  and the metadata Stripe stores with the PaymentIntent. So there is never a charge we have no record
  of: a pending row whose outcome never arrived is looked up in Stripe by that metadata before anything
  is charged again (localstripe ignores idempotency keys, so the lookup is what keeps us honest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from accounts.roles import TeamAction, team_role_check
from accounts.services import audit_entry_create
from billing.models import Invoice, Payment
from core.errors import ApplicationError
from core.invalidation import cache_invalidations_apply
from core.periods import period_bounds
from tiers import catalog
from tiers.models import Subscription, Tier

if TYPE_CHECKING:
    from accounts.models import Team, User

# Invoices the customer waits for at checkout: one attempt, voided on failure, never dunned.
CHECKOUT_KINDS = (Invoice.Kind.INITIAL, Invoice.Kind.PRORATION)
# The outcomes of an attempt that failed (one dunning step each, for a renewal).
FAILED_STATUSES = (Payment.Status.FAILED, Payment.Status.REQUIRES_ACTION, Payment.Status.CANCELED)


class BillingError(ApplicationError):
    code = "billing_error"


class PaymentMethodRequired(BillingError):
    """A paid tier needs a card on file (also for trials)."""

    code = "payment_method_required"
    status = 402
    type = "payment_error"


@dataclass(frozen=True)
class CheckoutResult:
    """What a subscribe/change did. ``change`` is one of: "subscribed" (charged now), "trial_started",
    "upgraded" (prorated difference charged now), "downgrade_scheduled" (at period end),
    "cancel_scheduled", "resumed"; and "canceled" (an operator's cancel, effective now)."""

    subscription: Subscription
    change: str
    invoice: Invoice | None = None
    payment: Payment | None = None


@dataclass
class BillingRunResult:
    periods_closed: int = 0
    invoices_created: int = 0
    payments_attempted: int = 0
    payments_succeeded: int = 0
    payments_failed: int = 0
    downgraded: int = 0
    errors: list[str] = field(default_factory=list)
    # Scheduled downgrades and cancels applied at a period boundary, and trials that ended.
    changes_applied: int = 0


# --- Small helpers ----------------------------------------------------------------------------------


def billing_role_check(*, team: Team, actor: User | None, manage: bool = True) -> None:
    """403 ``role_forbidden`` unless ``actor`` may see (``manage=False``) or change the team's billing;
    ``actor`` None is the system (commands, tasks)."""
    team_role_check(team=team, actor=actor, action=TeamAction.BILLING_MANAGE if manage else TeamAction.BILLING_VIEW)


def billing_now(now: datetime | None) -> datetime:
    """The billing clock: ``now`` if given (simulated time, a test, ``run_billing --now``), else now."""
    return now or timezone.now()


def audit(
    *,
    team_id: int | None,
    action: AuditEntry.Action,
    description: str,
    now: datetime,
    actor: User | None = None,
    **data: Any,
) -> AuditEntry:
    return audit_entry_create(team_id=team_id, action=action, description=description, now=now, actor=actor, data=data)


def entitlements_changed() -> None:
    # The database's triggers published the change (core/invalidation.py): after the commit this process
    # reads the feed at once, so a reload sees the new tier/status; the others at their next poll.
    transaction.on_commit(cache_invalidations_apply)


def free_tier() -> Tier:
    tier = Tier.objects.filter(slug=catalog.FREE_TIER_SLUG).first()
    if tier is None:
        raise BillingError(
            f"The free tier ('{catalog.FREE_TIER_SLUG}') does not exist: run `manage.py seed_tiers`.",
            code="free_tier_missing",
        )
    return tier


def subscription_restart_on_free(*, sub: Subscription, now: datetime, canceled: bool = False) -> Tier:
    """Move ``sub`` (locked by the caller) to the free tier now, with a period starting now, so its
    quota starts afresh; scheduled changes and dunning state are cleared (its cached entitlements too,
    after the commit). Returns the free tier."""
    free = free_tier()
    start, end = period_bounds(now, free.billing_interval, 0)
    # The scheduled change is dropped, but canceled_at is kept (as the period close keeps it), or set for
    # an operator's cancel now.
    canceled_at = now if canceled else sub.canceled_at
    sub.scheduled_change_clear()
    sub.canceled_at = canceled_at
    sub.tier = free
    sub.status = Subscription.Status.ACTIVE
    sub.past_due_since = None
    sub.billing_anchor, sub.current_period_start, sub.current_period_end = now, start, end
    sub.save()
    entitlements_changed()
    return free
