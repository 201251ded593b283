"""Dunning: what a failed renewal charge means, and how it ends.

A renewal whose charge fails makes the subscription ``past_due`` (its API access lasts
TIERLAB_PAST_DUE_GRACE_DAYS more), and is retried TIERLAB_DUNNING_RETRY_DAYS after that FIRST failure;
after the last retry the invoice is written off (uncollectible) and the team moved to the free tier
(``dunning_end``). Paying (or comping) the open renewal makes it active again
(``subscription_restore_if_settled``). Nothing is deleted. The charges themselves are billing.payments'.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from accounts.models import AuditEntry
from billing import emails
from billing.models import Invoice, Payment
from billing.services import FAILED_STATUSES, audit, entitlements_changed, subscription_restart_on_free
from tiers.models import Subscription


def dunning_step(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    """``payment``, the latest attempt of the open renewal ``invoice`` (both locked), failed: schedule the
    next retry, or end dunning after the last one.

    Retries are counted from the FIRST failure of this invoice, not from the previous retry, so the
    schedule is the same whenever the passes happen to run: with [1, 3, 5] the retries are 1, 3 and 5
    days after the renewal first failed. The first failure's time is the creation time (billing clock)
    of the invoice's first failed attempt, whichever path records it."""
    first_failure_at = (
        invoice.payments.filter(status__in=FAILED_STATUSES).order_by("attempt").values_list("created_at", flat=True)
    ).first() or payment.created_at
    sub = Subscription.objects.get_locked(invoice.subscription_id)
    retry_days = list(settings.TIERLAB_DUNNING_RETRY_DAYS)
    if payment.attempt > len(retry_days):
        dunning_end(sub=sub, invoice=invoice, now=now)
        return
    if sub.status in (Subscription.Status.ACTIVE, Subscription.Status.TRIALING):
        sub.status = Subscription.Status.PAST_DUE
    if sub.past_due_since is None:
        sub.past_due_since = first_failure_at
    sub.save(update_fields=["status", "past_due_since", "updated_at"])
    next_attempt_at = first_failure_at + timedelta(days=retry_days[payment.attempt - 1])
    invoice.next_attempt_at = next_attempt_at
    invoice.save(update_fields=["next_attempt_at"])
    entitlements_changed()
    payment_id = payment.pk
    transaction.on_commit(lambda: emails.payment_failed_send(payment_id=payment_id, next_attempt_at=next_attempt_at))


def dunning_end(*, sub: Subscription, invoice: Invoice, now: datetime) -> None:
    """The last retry failed: write the invoice off and move the team to the free tier now, with a
    period starting now (its quota starts afresh). Nothing is deleted; the invoice stays on record."""
    invoice.status = Invoice.Status.UNCOLLECTIBLE
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "next_attempt_at"])
    old = sub.tier
    free = subscription_restart_on_free(sub=sub, now=now)
    audit(
        team_id=sub.team_id,
        action=AuditEntry.Action.DOWNGRADED_AFTER_DUNNING,
        description=f"{old.name} -> {free.name}: {invoice.number} unpaid after {invoice.attempt_count} attempts.",
        now=now,
        from_tier=old.slug,
        to_tier=free.slug,
        invoice_id=invoice.pk,
    )
    invoice_id, tier_name = invoice.pk, free.name
    transaction.on_commit(lambda: emails.downgraded_send(invoice_id=invoice_id, tier_name=tier_name, downgraded_at=now))


def subscription_restore_if_settled(*, sub: Subscription, invoice: Invoice) -> None:
    """A past-due subscription becomes active again once no renewal invoice of it is left open. A
    suspended one stays suspended, but its dunning state is cleared all the same, so that lifting the
    suspension does not bring back a debt that was paid meanwhile (tiers.services.subscription_unsuspend)."""
    if sub.past_due_since is None and sub.status != Subscription.Status.PAST_DUE:
        return
    still_open = (
        Invoice.objects.filter(subscription=sub, kind=Invoice.Kind.RENEWAL, status=Invoice.Status.OPEN)
        .exclude(pk=invoice.pk)
        .exists()
    )
    if not still_open:
        if sub.status == Subscription.Status.PAST_DUE:
            sub.status = Subscription.Status.ACTIVE
        sub.past_due_since = None
        sub.save(update_fields=["status", "past_due_since", "updated_at"])
        entitlements_changed()


def dunning_sweep(*, now: datetime) -> int:
    """End dunning for open renewal invoices that are out of attempts: normally the last failure ends
    it at once, but TIERLAB_DUNNING_RETRY_DAYS may have been shortened meanwhile (a retry still
    scheduled, or none, for an invoice that has had all the attempts the new schedule allows)."""
    exhausted = (
        Invoice.objects.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
            status=Invoice.Status.OPEN,
            kind=Invoice.Kind.RENEWAL,
            attempt_count__gte=1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS),
        )
        .exclude(Exists(Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.PENDING)))
        .values_list("pk", flat=True)
    )
    ended = 0
    for invoice_id in list(exhausted):
        with transaction.atomic():
            invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
            if invoice.status != Invoice.Status.OPEN or invoice.payments.filter(status=Payment.Status.PENDING).exists():
                continue
            dunning_end(sub=Subscription.objects.get_locked(invoice.subscription_id), invoice=invoice, now=now)
            ended += 1
    return ended
