"""factory_boy factories for the main models.

Where production has a function that makes a row or computes one of its values, the factory calls it
instead of restating it: API keys and partners are made by their services (the raw secret is kept on
the returned instance as ``.secret``), subscribers sign up through ``tiers.services.user_create``,
subscription periods come from ``core.periods``, usage records are written by the metering path's
``usage_records_create``, invoice numbers by the engine's ``invoice_numbers_assign``, fee lines are
described by ``billing.close.fee_description``, payment attempts are recorded by
``billing.payments.payment_start``. An invoice's total is the sum of its lines: each line made by
InvoiceLineFactory adds itself to it, as the engine sums the lines it writes.

Most factories need the seed catalog (the ``catalog`` fixture): a subscription's tier defaults to the
tier new accounts get (``tier_get_for_signup``).
"""

from __future__ import annotations

from datetime import date

import factory
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team, User
from accounts.services import api_key_create
from billing.close import fee_description, invoice_numbers_assign
from billing.models import BillingCustomer, Invoice, InvoiceLine, Payment
from billing.payments import payment_start
from core.periods import period_bounds
from partners.models import Partner
from partners.services import partner_create
from tiers.models import LanguageModel, Subscription, Tier
from tiers.services import tier_get_for_signup, user_create
from usage.models import UsageRecord
from usage.quotas.base import UsageEvent
from usage.services import usage_records_create

PASSWORD = "correct-horse-battery-9"


def _fields_set(instance, fields: dict) -> None:
    """Give a row a service made the fields the service does not set, and save them."""
    for field, value in fields.items():
        setattr(instance, field, value)
    if fields:
        instance.save(update_fields=list(fields))


# --- accounts ---------------------------------------------------------------------------------------------


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class SubscriberFactory(UserFactory):
    """A user signed up as operators and scripts sign them up (``tiers.services.user_create``): a
    verified email and a personal team subscribed to ``tier_slug`` (default: the free tier). The team
    is ``accounts.selectors.team_for_user(user=...)``."""

    password = PASSWORD  # given to user_create rather than set afterwards
    tier_slug = None

    @classmethod
    def _create(cls, model_class, *, email, password, tier_slug=None, **fields):
        user = user_create(email=email, password=password, tier_slug=tier_slug)
        _fields_set(user, fields)  # e.g. is_staff
        return user


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    team = factory.SubFactory("tests.factories.TeamFactory", owner=False)
    role = Membership.Role.MEMBER


class TeamFactory(factory.django.DjangoModelFactory):
    """A team with an owner: ``owner=<user>``, or a new user (``owner__email="..."``); ``owner=False``
    for none."""

    class Meta:
        model = Team
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Team {n}")

    @factory.post_generation
    def owner(team, create, extracted, **kwargs):
        if not create or extracted is False:
            return None
        user = extracted or UserFactory(**kwargs)
        return MembershipFactory(team=team, user=user, role=Membership.Role.OWNER)


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """A key made by ``accounts.services.api_key_create``; its raw secret is ``key.secret``."""

    class Meta:
        model = ApiKey

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"key {n}")
    created_by = None
    expires_at = None

    @classmethod
    def _create(cls, model_class, *, team, name, created_by, expires_at, **fields):
        key, secret = api_key_create(team=team, name=name, created_by=created_by, expires_at=expires_at)
        key.secret = secret
        _fields_set(key, fields)  # e.g. revoked_at or last_used_at
        return key


# --- tiers ------------------------------------------------------------------------------------------------


class LanguageModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LanguageModel

    model_id = factory.Sequence(lambda n: f"Test-Model-{n}")
    display_name = factory.SelfAttribute("model_id")
    released_on = date(2025, 1, 1)


class TierFactory(factory.django.DjangoModelFactory):
    """A tier validated as the admin validates it (``Tier.full_clean``): paid, $50 a month, no trial, no
    limits by default; ``free=True`` for a free one; ``allowed_models=[...]`` for its models."""

    class Meta:
        model = Tier
        skip_postgeneration_save = True

    class Params:
        free = factory.Trait(is_paid=False, price_cents=0)

    slug = factory.Sequence(lambda n: f"tier-{n}")
    name = factory.LazyAttribute(lambda tier: tier.slug.title())
    is_paid = True
    price_cents = 5_000

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        tier = model_class(*args, **kwargs)
        tier.full_clean()
        tier.save()
        return tier

    @factory.post_generation
    def allowed_models(tier, create, extracted, **kwargs):
        if create and extracted:
            tier.allowed_models.set(extracted)


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """A subscription to ``tier`` (default: the sign-up tier) anchored at ``billing_anchor`` (default:
    now), in its ``period``-th period (default: the first), bounded by ``core.periods.period_bounds``."""

    class Meta:
        model = Subscription

    class Params:
        period = 0
        bounds = factory.LazyAttribute(lambda s: period_bounds(s.billing_anchor, s.tier.billing_interval, s.period))

    team = factory.SubFactory(TeamFactory)
    tier = factory.LazyFunction(tier_get_for_signup)
    status = Subscription.Status.ACTIVE
    billing_anchor = factory.LazyFunction(timezone.now)
    current_period_start = factory.LazyAttribute(lambda s: s.bounds[0])
    current_period_end = factory.LazyAttribute(lambda s: s.bounds[1])


# --- usage ------------------------------------------------------------------------------------------------


class UsageRecordFactory(factory.django.DjangoModelFactory):
    """A usage record written as the metering path writes it (``usage.services.usage_records_create``
    of a ``UsageEvent``, whose total is prompt + completion tokens)."""

    class Meta:
        model = UsageRecord

    request_id = factory.Sequence(lambda n: f"req-{n}")
    team = factory.SubFactory(TeamFactory)
    api_key = None
    model = "Llama-3.3-70B-Instruct"
    prompt_tokens = 0
    completion_tokens = 0
    partner_id = None
    created_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *, team, api_key, **fields):
        event = UsageEvent(team_id=team.pk, api_key_id=api_key.pk if api_key else None, **fields)
        assert usage_records_create(events=[event]) == 1, f"request id {event.request_id} is taken"
        return model_class.objects.get(team=team, request_id=event.request_id)


# --- billing ----------------------------------------------------------------------------------------------


class BillingCustomerFactory(factory.django.DjangoModelFactory):
    """A card on file (a Visa ending 4242 by default), without Stripe."""

    class Meta:
        model = BillingCustomer

    team = factory.SubFactory(TeamFactory)
    stripe_customer_id = factory.LazyAttribute(lambda c: f"cus_test_{c.team.pk}")
    default_payment_method_id = factory.LazyAttribute(lambda c: f"pm_test_{c.team.pk}")
    card_brand = "visa"
    card_last4 = "4242"


class InvoiceLineFactory(factory.django.DjangoModelFactory):
    """A line of ``invoice``, by default its fee: the tier's price for the invoice's period, described
    by the engine's ``fee_description``. The line adds its amount to the invoice's total."""

    class Meta:
        model = InvoiceLine

    invoice = factory.SubFactory("tests.factories.InvoiceFactory", fee=None)
    kind = InvoiceLine.Kind.FEE
    tier = factory.SelfAttribute("invoice.subscription.tier")
    quantity = 1
    unit_amount_cents = factory.SelfAttribute("tier.price_cents")
    amount_cents = factory.SelfAttribute("unit_amount_cents")
    period_start = factory.SelfAttribute("invoice.period_start")
    period_end = factory.SelfAttribute("invoice.period_end")
    description = factory.LazyAttribute(
        lambda line: fee_description(tier=line.tier, start=line.period_start, end=line.period_end)
    )

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        line = super()._create(model_class, *args, **kwargs)
        line.invoice.total_cents += line.amount_cents
        line.invoice.save(update_fields=["total_cents"])
        return line


class InvoiceFactory(factory.django.DjangoModelFactory):
    """An issued (open) invoice of ``subscription`` for its current period, with a fee line for ``tier``
    (default: the subscription's; ``fee=None`` for no line), keyed and numbered as the engine does: the
    billing key ``<kind>:<subscription>:<period start>`` (a proration's period starts at the change),
    the number by ``billing.close.invoice_numbers_assign`` unless ``number=`` is given.
    ``paid=True``: paid when issued, by one succeeded payment."""

    class Meta:
        model = Invoice
        skip_postgeneration_save = True

    class Params:
        tier = factory.SelfAttribute("subscription.tier")
        paid = factory.Trait(
            status=Invoice.Status.PAID,
            paid_at=factory.SelfAttribute("issued_at"),
            payment=factory.RelatedFactory(
                "tests.factories.PaymentFactory", "invoice", status=Payment.Status.SUCCEEDED
            ),
        )

    subscription = factory.SubFactory(SubscriptionFactory)
    team = factory.SelfAttribute("subscription.team")
    kind = Invoice.Kind.RENEWAL
    status = Invoice.Status.OPEN
    currency = factory.SelfAttribute("tier.currency")
    total_cents = 0  # the lines add themselves
    period_start = factory.SelfAttribute("subscription.current_period_start")
    period_end = factory.SelfAttribute("subscription.current_period_end")
    issued_at = factory.SelfAttribute("period_start")
    billing_key = factory.LazyAttribute(lambda i: f"{i.kind}:{i.subscription.pk}:{i.period_start.isoformat()}")
    number = None
    fee = factory.RelatedFactory(InvoiceLineFactory, "invoice", tier=factory.SelfAttribute("..tier"))

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        invoice = super()._create(model_class, *args, **kwargs)
        if invoice.number is None:
            invoice_numbers_assign([invoice.pk])
            invoice.refresh_from_db(fields=["number"])
        return invoice


class PaymentFactory(factory.django.DjangoModelFactory):
    """The next attempt at ``invoice``, recorded by the engine's ``billing.payments.payment_start``
    (attempt number, idempotency key, the invoice's total, the invoice's attempt count), then given
    ``status`` and the other fields passed."""

    class Meta:
        model = Payment

    invoice = factory.SubFactory(InvoiceFactory)
    created_at = factory.SelfAttribute("invoice.issued_at")
    status = Payment.Status.PENDING
    stripe_payment_intent_id = factory.Sequence(lambda n: f"pi_test_{n}")

    @classmethod
    def _create(cls, model_class, *, invoice, created_at, **fields):
        payment = payment_start(invoice=invoice, now=created_at)
        _fields_set(payment, fields)
        return payment


# --- partners ---------------------------------------------------------------------------------------------


class PartnerFactory(factory.django.DjangoModelFactory):
    """A partner made by ``partners.services.partner_create``: its first share rate (``share_bps`` from
    the day of ``now``) and a first key, whose raw secret is ``partner.secret``."""

    class Meta:
        model = Partner

    slug = factory.Sequence(lambda n: f"partner-{n}")
    name = factory.LazyAttribute(lambda p: p.slug.title())
    contact_email = factory.LazyAttribute(lambda p: f"billing@{p.slug}.example")
    share_bps = 1_500
    now = None

    @classmethod
    def _create(cls, model_class, **kwargs):
        partner, secret = partner_create(**kwargs)
        partner.secret = secret
        return partner
