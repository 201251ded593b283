"""Every write to tiers and subscriptions goes through here."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models.functions import Lower
from django.utils import timezone

from accounts import services as account_services
from accounts.models import AuditEntry, User
from accounts.roles import TeamAction, team_role_check
from core.errors import ApplicationError
from core.invalidation import cache_invalidations_apply
from core.periods import period_bounds
from core.templatetags.tier_format import money
from tiers import catalog
from tiers.models import LanguageModel, Subscription, Tier

if TYPE_CHECKING:
    from accounts.models import Team, User

logger = logging.getLogger(__name__)


class InvalidTierChange(ApplicationError):
    code = "invalid_tier_change"


class TierUnavailable(ApplicationError):
    code = "tier_unavailable"


@dataclass
class CatalogSeedResult:
    created_models: list[str] = field(default_factory=list)
    created_tiers: list[str] = field(default_factory=list)


@transaction.atomic
def tier_catalog_seed() -> CatalogSeedResult:
    """Create the seed models and tiers that do not exist yet.

    Idempotent, and never overwrites: a model or tier that exists (by id/slug) is left exactly as the
    operator last edited it, including its model entitlements. Only objects created now get the seed
    values.
    """
    result = CatalogSeedResult()
    models_by_id = {m.model_id: m for m in LanguageModel.objects.all()}
    for spec in catalog.SEED_MODELS:
        if spec["model_id"] not in models_by_id:
            model = LanguageModel(**spec)
            model.full_clean()
            model.save()
            models_by_id[model.model_id] = model
            result.created_models.append(model.model_id)

    existing_slugs = set(Tier.objects.values_list("slug", flat=True))
    for spec in catalog.SEED_TIERS:
        if spec["slug"] in existing_slugs:
            continue
        values = {k: v for k, v in spec.items() if k != "models"}
        tier = Tier(**values)
        tier.full_clean()
        tier.save()
        tier.allowed_models.set([models_by_id[model_id] for model_id in spec["models"]])
        result.created_tiers.append(tier.slug)
    return result


def tier_selectable_check(*, tier: Tier, public_only: bool = False) -> Tier:
    """``tier`` if it can be chosen now, else TierUnavailable: the one check of Tier.selectable_refusal
    (archived tiers never; with ``public_only``, as for customers, non-public ones neither)."""
    refusal = tier.selectable_refusal(public_only=public_only)
    if refusal:
        raise TierUnavailable(refusal, extra={"tier": tier.slug})
    return tier


def tier_get_for_signup(*, slug: str | None = None) -> Tier:
    """The tier a new team starts on: ``slug`` if given, else the free tier. Archived tiers are refused."""
    slug = slug or catalog.FREE_TIER_SLUG
    tier = Tier.objects.filter(slug=slug).first()
    if tier is None:
        raise TierUnavailable(
            f"Tier '{slug}' does not exist. Run `manage.py seed_tiers` to create the catalog.",
            extra={"tier": slug},
        )
    return tier_selectable_check(tier=tier)


@transaction.atomic
def subscription_create(*, team: Team, tier: Tier, now: datetime | None = None) -> Subscription:
    """Start ``team`` on ``tier`` now. The billing anchor is ``now``; the first period is one interval.

    A paid tier with trial days starts ``trialing``. Charging for paid tiers is the billing engine's
    job; this only records the entitlement.
    """
    now = now or timezone.now()
    tier_selectable_check(tier=tier)
    subscription = _subscription_new(team=team, tier=tier, now=now)
    subscription.full_clean()
    subscription.save()
    return subscription


def _subscription_new(*, team: Team, tier: Tier, now: datetime) -> Subscription:
    """A new team's subscription to ``tier`` from ``now`` (not saved): anchored now, one interval, a
    trial on a paid tier with trial days."""
    start, end = period_bounds(now, tier.billing_interval, 0)
    trial_end = None
    status = Subscription.Status.ACTIVE
    if tier.is_paid and tier.trial_days:
        status = Subscription.Status.TRIALING
        trial_end = now + timedelta(days=tier.trial_days)
    return Subscription(
        team=team,
        tier=tier,
        status=status,
        billing_anchor=now,
        current_period_start=start,
        current_period_end=end,
        trial_end=trial_end,
    )


@transaction.atomic
def tier_archive(*, tier: Tier) -> Tier:
    """Hide ``tier`` from new sign-ups and changes; its current subscribers keep it."""
    if not tier.is_archived:
        tier.is_archived = True
        tier.save(update_fields=["is_archived", "updated_at"])
    return tier


@transaction.atomic
def tier_unarchive(*, tier: Tier) -> Tier:
    if tier.is_archived:
        tier.is_archived = False
        tier.save(update_fields=["is_archived", "updated_at"])
    return tier


def tier_has_subscribers(*, tier: Tier) -> bool:
    """True if any subscription (current, past or pending) refers to ``tier``: then it can only be archived."""
    return tier.subscriptions.exists() or tier.pending_subscriptions.exists()


# --- Spend cap ------------------------------------------------------------------------------------------


class SpendCapNotAvailable(ApplicationError):
    code = "spend_cap_not_available"
    status = 409  # the request is well formed; the subscription's tier does not allow it


class SpendCapBelowFee(ApplicationError):
    code = "spend_cap_below_fee"


@transaction.atomic
def subscription_spend_cap_set(
    *, team: Team, cap_cents: int | None, hard: bool, now: datetime | None = None, actor: User | None = None
) -> Subscription:
    """Set (or with ``cap_cents=None`` remove) the team's own monthly spend cap: the most the period's
    bill, tier fee + overage, may reach. ``hard``: the model API refuses with insufficient_quota once
    the overage would pass it (Entitlements.spend_capped_tokens); otherwise an alert email only.

    Only tiers that bill overage have a bill that grows with usage, so only they take a cap; a cap
    below the tier fee could never be met, so it is refused rather than blocking the API outright.
    Applies to the current period at once: the model API sees it when this process's cached
    entitlements are dropped (after commit, here) and other processes' expire. ``actor`` needs a role
    that runs billing (accounts.roles; None: the system).
    """
    now = now or timezone.now()
    team_role_check(team=team, actor=actor, action=TeamAction.BILLING_MANAGE)
    subscription = Subscription.objects.current().select_for_update().select_related("tier").filter(team=team).first()
    if subscription is None:
        raise SpendCapNotAvailable("Your team has no subscription to set a spend cap on.")
    tier = subscription.tier
    if cap_cents is not None:
        if not tier.bills_overage:
            raise SpendCapNotAvailable(
                f"The {tier.name} tier does not bill overage, so its bill cannot grow: there is nothing to cap.",
                extra={"field": "amount_cents"},
            )
        if cap_cents < tier.price_cents:
            raise SpendCapBelowFee(
                f"The spend cap must be at least the tier fee ({money(tier.price_cents, tier.currency)}).",
                extra={"field": "amount_cents"},
            )
    subscription.spend_cap_cents = cap_cents
    subscription.spend_cap_hard = hard
    subscription.full_clean()
    subscription.save(update_fields=["spend_cap_cents", "spend_cap_hard", "updated_at"])
    account_services.audit_entry_create(
        team_id=team.pk,
        actor=actor,
        action=AuditEntry.Action.SPEND_CAP_SET if cap_cents is not None else AuditEntry.Action.SPEND_CAP_REMOVED,
        description=(
            f"Spend cap set to {money(cap_cents, tier.currency)} ({'hard' if hard else 'notify only'})"
            if cap_cents is not None
            else "Spend cap removed"
        ),
        data={"cap_cents": cap_cents, "hard": hard},
        now=now,
    )
    transaction.on_commit(cache_invalidations_apply)  # this process at once, the others at their next poll
    return subscription


# --- Operators: suspend and unsuspend ----------------------------------------------------------------


class SubscriptionNotSuspendable(ApplicationError):
    code = "subscription_not_suspendable"
    status = 409  # well formed; the subscription is not in a state that allows it


class ReasonRequired(ApplicationError):
    code = "reason_required"


def operator_reason_check(reason: str, *, what: str) -> str:
    """An operator's action on a customer (here, and billing's refunds, comps and tier moves) is written
    to the audit log with why: refused without a reason."""
    if not (reason or "").strip():
        raise ReasonRequired(f"Say why: {what} needs a reason.")
    return reason


@transaction.atomic
def subscription_suspend(
    *, subscription: Subscription, actor: User, reason: str, now: datetime | None = None
) -> Subscription:
    """Operators suspend a subscription (abuse, a dispute...); written to the audit log.

    Until it is unsuspended: the model API refuses the team with ``subscription_inactive``
    (Entitlements.is_active_at), its periods are neither closed nor billed (billing's period close takes
    active and trialing ones only), and the customer cannot change tier. Open invoices stay open, for
    dunning or a comp. The model API sees it at once in this process, in others within
    TIERLAB_AUTH_CACHE_SECONDS."""
    now = now or timezone.now()
    operator_reason_check(reason, what="a suspension")
    sub = Subscription.objects.get_locked(subscription.pk)
    if sub.status in (Subscription.Status.SUSPENDED, Subscription.Status.CANCELED):
        raise SubscriptionNotSuspendable(f"{sub.team}'s subscription is {sub.get_status_display().lower()} already.")
    was = sub.status
    sub.status = Subscription.Status.SUSPENDED
    sub.save(update_fields=["status", "updated_at"])
    account_services.audit_entry_create(
        team_id=sub.team_id,
        actor=actor,
        action=AuditEntry.Action.SUSPENDED,
        description=f"Suspended (was {was}): {reason}",
        data={"from_status": was, "reason": reason},
        now=now,
    )
    transaction.on_commit(cache_invalidations_apply)  # this process at once, the others at their next poll
    subscription.refresh_from_db()
    return sub


def _status_after_suspension(sub: Subscription, *, now: datetime) -> str:
    """The status a suspended subscription returns to, from its own state (which billing may have moved
    meanwhile: a renewal charge failed, or was paid): past due while a failed renewal is unpaid (its
    dunning and the API's grace count from the first failure), trialing on a paid tier while the trial
    runs, else active."""
    if sub.past_due_since is not None:
        return Subscription.Status.PAST_DUE
    if sub.tier.is_paid and sub.trial_end is not None and now < sub.trial_end:
        return Subscription.Status.TRIALING
    return Subscription.Status.ACTIVE


@transaction.atomic
def subscription_unsuspend(
    *, subscription: Subscription, actor: User, reason: str, now: datetime | None = None
) -> Subscription:
    """Operators lift a suspension; written to the audit log. A period that ended meanwhile is closed
    (and billed) by the next billing pass."""
    now = now or timezone.now()
    operator_reason_check(reason, what="lifting a suspension")
    sub = Subscription.objects.get_locked(subscription.pk)
    if sub.status != Subscription.Status.SUSPENDED:
        raise SubscriptionNotSuspendable(f"{sub.team}'s subscription is not suspended.", code="not_suspended")
    sub.status = _status_after_suspension(sub, now=now)
    sub.save(update_fields=["status", "updated_at"])
    account_services.audit_entry_create(
        team_id=sub.team_id,
        actor=actor,
        action=AuditEntry.Action.UNSUSPENDED,
        description=f"Suspension lifted (now {sub.status}): {reason}",
        data={"to_status": sub.status, "reason": reason},
        now=now,
    )
    transaction.on_commit(cache_invalidations_apply)  # this process at once, the others at their next poll
    subscription.refresh_from_db()
    return sub


# --- New accounts: a personal team on a tier ---------------------------------------------------------
# A sign-up (allauth, through tiers.adapters), a command or the demo seed makes a user whose personal
# team starts on a tier; accounts makes the user and team, tiers the subscription.


@transaction.atomic
def account_setup_new_user(*, user: User, tier_slug: str | None = None) -> Team:
    """Give a newly signed-up ``user`` a personal team subscribed to ``tier_slug`` (default: free).

    Called by the allauth adapter at sign-up and by commands that create users. Fails, and so rolls
    back the sign-up, if the tier is missing or archived.
    """
    tier = tier_get_for_signup(slug=tier_slug)
    team = account_services.team_create_personal(user=user)
    subscription_create(team=team, tier=tier)
    return team


def team_set_up(*, team: Team) -> None:
    """What every new team starts with (registered at accounts.extensions by TiersConfig.ready): the
    free tier. Before the catalog is seeded (an operator made with createsuperuser first) the team
    starts without a subscription; billing gives it the free one when it first subscribes."""
    try:
        tier = tier_get_for_signup()
    except TierUnavailable as exc:
        logger.warning("team %s starts without a subscription: %s", team.pk, exc.message)
        return
    subscription_create(team=team, tier=tier)


@transaction.atomic
def user_create(*, email: str, password: str | None = None, tier_slug: str | None = None) -> User:
    """Create a user with a verified primary email, a personal team and a subscription.

    For operators and scripts (commands, the demo account); people sign up through allauth's pages.
    """
    from allauth.account.models import EmailAddress

    user = User(email=User.objects.normalize_email(email).lower())
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
    account_setup_new_user(user=user, tier_slug=tier_slug)
    return user


class EmailTaken(ApplicationError):
    code = "email_taken"


@transaction.atomic
def users_create(*, emails: list[str], tier_slug: str | None = None) -> list[tuple[User, Team]]:
    """``user_create`` for many new users at once (the simulator's sign-ups): each with a verified
    primary email, a personal team and a subscription to ``tier_slug`` (default: free), in a few
    INSERTs instead of a dozen queries a user. Returns (user, team) in the order of ``emails``.

    The same rules as one by one: emails normalized and lowercased, no usable password, every row
    validated (``full_clean``), the tier checked once. The checks that would take a query per row are
    made once for the batch (an email already taken, or twice in ``emails``: EmailTaken, nothing
    written) or are the database's (a team's random slug unique; a new team has no subscription yet
    for "one current per team" to refuse; the period is positive by ``period_bounds``)."""
    from allauth.account.models import EmailAddress

    if not emails:
        return []
    now = timezone.now()
    tier = tier_get_for_signup(slug=tier_slug)
    users = []
    for email in emails:
        user = User(email=User.objects.normalize_email(email).lower())
        user.set_unusable_password()
        user.full_clean(validate_unique=False, validate_constraints=False)
        users.append(user)
    wanted = [user.email for user in users]
    existing = User.objects.annotate(email_lower=Lower("email")).filter(email_lower__in=wanted)
    taken = set(existing.values_list("email_lower", flat=True))
    taken.update(email for email, count in Counter(wanted).items() if count > 1)
    if taken:
        raise EmailTaken(f"A user with this email already exists: {sorted(taken)[0]}.", extra={"emails": sorted(taken)})
    teams = account_services.users_and_teams_create(users=users)
    EmailAddress.objects.bulk_create(
        [EmailAddress(user=user, email=user.email, primary=True, verified=True) for user in users]
    )
    subscriptions = []
    for team in teams:
        subscription = _subscription_new(team=team, tier=tier, now=now)
        subscription.full_clean(exclude=["team", "tier"], validate_unique=False, validate_constraints=False)
        subscriptions.append(subscription)
    Subscription.objects.bulk_create(subscriptions)
    return list(zip(users, teams, strict=True))


@transaction.atomic
def operator_ensure(*, email: str, password: str) -> tuple[User, bool]:
    """Make sure an operator (staff superuser) with ``email`` exists; returns (user, created).

    An existing account is promoted but its password is left alone, so re-running never undoes a
    password the operator changed.
    """
    user = User.objects.filter(email__iexact=email).first()
    created = user is None
    if created:
        user = user_create(email=email, password=password)
    elif not user.memberships.exists():  # made before operators got a personal team
        account_setup_new_user(user=user)
    if not (user.is_staff and user.is_superuser):
        user.is_staff = True
        user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user, created
