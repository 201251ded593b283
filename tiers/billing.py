"""The billing engine: subscribing and changing tiers (with proration), period close (invoices),
charging (payments), dunning, refunds and comps. Every write of billing state goes through here.

INTERFACE STUB written by the lead: the signatures and contracts below are what the pages, the
account API, the admin, the webhook processor and the Celery tasks call. The billing helper
implements them; keep these names, arguments and return types.

Time: every function that depends on time takes ``now`` (default ``timezone.now()``), so billing can
be run forward in simulated time without patching.
Exactly-once: invoices are unique on ``billing_key``; payments on (invoice, attempt) and on their
idempotency key; the period advance is a compare-and-set on the old period end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from config.errors import ApplicationError

if TYPE_CHECKING:
    from accounts.models import Team, User
    from tiers.models import BillingCustomer, Invoice, Payment, Refund, Subscription, Tier
    from tiers.stripe_gateway import PaymentIntentResult


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
    "cancel_scheduled", "resumed"."""

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


@dataclass(frozen=True)
class BillingOverview:
    """What /billing/ shows."""

    subscription: Subscription | None
    next_charge_at: datetime | None
    next_charge_cents: int | None
    currency: str
    pending_change: str  # human readable, "" if none: "Moves to Free on Mar 1", "Cancels on Mar 1"
    card_brand: str
    card_last4: str
    invoices: list[Invoice]


def billing_customer_ensure(*, team: Team, now: datetime | None = None) -> BillingCustomer:
    """The team's Stripe customer, created on first use (idempotent)."""
    raise NotImplementedError


def payment_method_update(*, team: Team, payment_method: str, actor: User | None = None) -> BillingCustomer:
    """Attach ``payment_method`` (a Stripe test PM such as "pm_card_visa") and make it the default.
    A decline raises stripe_gateway.PaymentDeclined and changes nothing locally."""
    raise NotImplementedError


def subscription_change(
    *, team: Team, tier: Tier, payment_method: str | None = None, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """Subscribe ``team`` to ``tier`` or change to it (the checkout page and POST /api/v1/subscription).

    - From free (or a canceled/trialing-free state) to a paid tier: a card is required
      (``payment_method``, or the one on file); a tier with trial days starts trialing without a charge
      (once per team); otherwise a new period starts now and its fee is invoiced and charged now.
    - Paid to a more expensive tier (upgrade): takes effect now; the prorated difference for the rest
      of the current period is invoiced (credit + charge lines) and charged now.
    - To a cheaper tier or to free (downgrade): scheduled for the period end (``pending_tier``), undoable.
    - A declined card (at attach or at the immediate charge) raises PaymentDeclined and changes nothing:
      no tier change, the invoice (if any) is voided.
    Raises tiers.services.InvalidTierChange (same tier, nothing to do) or TierUnavailable (archived,
    not public).
    """
    raise NotImplementedError


def subscription_cancel(
    *, team: Team, immediately: bool = False, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """Cancel the paid tier: at period end (``cancel_at_period_end``; the team then moves to the free
    tier), or now for operators (``immediately``; no refund here)."""
    raise NotImplementedError


def subscription_resume(*, team: Team, actor: User | None = None) -> CheckoutResult:
    """Undo a scheduled cancel or downgrade."""
    raise NotImplementedError


def subscription_tier_set_by_operator(
    *, subscription: Subscription, tier: Tier, actor: User, reason: str, now: datetime | None = None
) -> Subscription:
    """Operators move a customer to ``tier`` now, without a proration charge; written to the audit log."""
    raise NotImplementedError


def billing_run(*, now: datetime | None = None) -> BillingRunResult:
    """One pass of the engine (beat runs it every minute; `manage.py run_billing --now ISO` runs one):
    close every period that ended (invoice + advance, applying scheduled changes), charge the invoices
    that are due (first attempts and dunning retries), and end dunning for those out of retries.
    Safe to run twice at once and after a crash."""
    raise NotImplementedError


def invoice_pay(*, invoice: Invoice, now: datetime | None = None) -> Payment | None:
    """One charge attempt of an open invoice with the team's default card (exactly once per attempt);
    None if there is nothing to charge (paid, void, zero total)."""
    raise NotImplementedError


def payment_outcome_record(*, intent: PaymentIntentResult, now: datetime | None = None) -> Payment | None:
    """Apply a PaymentIntent's outcome (from the charge call or a webhook, in any order, any number of
    times) to its Payment, invoice and subscription; sends the receipt / payment-failed email once."""
    raise NotImplementedError


def payment_refund(
    *, payment: Payment, actor: User, reason: str, amount_cents: int | None = None, now: datetime | None = None
) -> Refund:
    """Refund (all or part of) a succeeded payment; written to the audit log."""
    raise NotImplementedError


def invoice_comp(*, invoice: Invoice, actor: User, reason: str, now: datetime | None = None) -> Invoice:
    """Operators waive an open invoice (void it, stop dunning, restore the subscription if it was past
    due because of it); written to the audit log."""
    raise NotImplementedError


def billing_overview(*, team: Team, now: datetime | None = None) -> BillingOverview:
    """For the /billing/ page: subscription, next charge date and amount (fee + estimated overage so
    far), pending change, card on file, invoices."""
    raise NotImplementedError
