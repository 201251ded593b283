"""The simulator's receipts: a day's receipts sent together when it ends (billing.emails.receipts_batched),
the same emails as one by one, only for payments that committed."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import transaction

from billing.checkout import subscription_change
from billing.emails import receipt_send, receipts_batched
from billing.models import Payment
from simulation.processor import SimulatedProcessor, processor_installed
from tiers.models import Tier
from tiers.services import users_create

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def _sent() -> list[tuple[str, list[str], str]]:
    return [(message.subject, message.to, message.body) for message in mail.outbox]


def test_a_blocks_receipts_are_sent_when_it_ends_as_one_by_one(catalog, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    tier = Tier(slug="team", name="Team", price_cents=5_000, monthly_tokens=10_000_000, sort_order=25)
    tier.full_clean()
    tier.save()
    emails = ["ada@example.com", "bob@example.com", "cy@example.com"]
    with processor_installed(SimulatedProcessor()):
        teams = [team for _, team in users_create(emails=emails)]
        with receipts_batched() as batch, transaction.atomic():
            for team in teams[:2]:
                subscription_change(team=team, tier=tier, payment_method="pm_card_visa")
            with pytest.raises(Rollback), transaction.atomic():  # paid, then rolled back: no receipt
                subscription_change(team=teams[2], tier=tier, payment_method="pm_card_visa")
                raise Rollback
            assert mail.outbox == []
        assert mail.outbox != []  # sent at the block's end, after the commit
        assert mail.outbox == mail.outbox[: batch.sent]

    paid = list(Payment.objects.filter(status=Payment.Status.SUCCEEDED).order_by("id").values_list("pk", flat=True))
    assert batch.sent == 2 and batch.payment_ids == paid
    assert [message.to for message in mail.outbox] == [[emails[0]], [emails[1]]]
    batched = _sent()
    mail.outbox.clear()
    for payment_id in paid:
        receipt_send(payment_id=payment_id)  # outside a block: sent at once, one by one
    assert _sent() == batched
    assert "$50.00" in batched[0][0] and "Receipt for invoice" in batched[0][0]
