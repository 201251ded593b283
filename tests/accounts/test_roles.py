"""Roles by actions (issue 14): who may view and change billing, keys, members, the spend cap and licence
requests, through the pages and the account API alike. One table (ACTIONS) says which roles may do each
action; every (action, role) pair runs against a fresh team of an owner, an admin, a billing member, a
member and a target member, and a refusal must be a 403 that changes nothing at all (a snapshot of every
row the actions touch is compared).

API actions also run through an API key of each role's user with every scope (``key``): the key acts with
its creator's role, so a ``manage`` key behind a member (an admin since demoted) is refused the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, AuditEntry, Invitation, Membership
from accounts.selectors import CURRENT_TEAM_SESSION_KEY, team_for_user
from partners.models import LicenseAgreement, MonthlyActiveUsers
from tiers import services as tier_services
from tiers.models import Subscription

ROLES = ["owner", "admin", "billing", "member"]
BILLING_ROLES = {"owner", "admin", "billing"}
MANAGERS = {"owner", "admin"}
EVERYONE = set(ROLES)


@dataclass
class Crew:
    team: object
    users: dict
    target: Membership  # a member the actions act on
    owner_key: ApiKey  # a key the owner created


@pytest.fixture
def crew(catalog, settings):
    settings.TIERLAB_SITE_URL = "http://tierlab.test"
    owner = tier_services.user_create(email="owner@example.com", tier_slug="pro")  # pro bills overage
    team = team_for_user(user=owner)
    users = {"owner": owner}
    for role in ["admin", "billing", "member", "target"]:
        user = tier_services.user_create(email=f"{role}@example.com")  # with a personal team of their own
        Membership.objects.create(user=user, team=team, role=Membership.Role.MEMBER if role == "target" else role)
        users[role] = user
    target = Membership.objects.get(team=team, user=users["target"])
    account_services.api_key_create(team=team, name="target's", created_by=users["target"])
    owner_key, _ = account_services.api_key_create(team=team, name="owner's", created_by=owner)
    LicenseAgreement.objects.create(
        team=team, required_from=date(2026, 11, 1), reported_mau=800_000_000, mau_month=date(2026, 10, 1),
        created_at=timezone.now(),
    )  # fmt: skip
    return Crew(team=team, users=users, target=target, owner_key=owner_key)


def session_for(crew: Crew, role: str) -> Client:
    """A browser of ``role``'s user, switched to the crew's team (their default is their personal team)."""
    client = Client()
    client.force_login(crew.users[role])
    session = client.session
    session[CURRENT_TEAM_SESSION_KEY] = crew.team.pk
    session.save()
    return client


def key_for(crew: Crew, role: str) -> Client:
    """An API client with a key of every scope behind ``role``'s user (made by the system, then
    attributed: as if its creator had been an admin when they made it)."""
    key, secret = account_services.api_key_create(
        team=crew.team, name=f"{role}'s key", scopes=["model", "read", "manage"]
    )
    ApiKey.objects.filter(pk=key.pk).update(created_by=crew.users[role])
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def snapshot(crew: Crew) -> dict:
    """Every row an action of the table could change."""
    sub = Subscription.objects.current().get(team=crew.team)
    return {
        "subscription": (sub.tier_id, sub.cancel_at_period_end, sub.pending_tier_id, sub.spend_cap_cents),
        "keys": sorted(ApiKey.objects.filter(team=crew.team).values_list("name", "revoked_at")),
        "members": sorted(Membership.objects.filter(team=crew.team).values_list("user__email", "role")),
        "invitations": list(Invitation.objects.filter(team=crew.team).values_list("email", "revoked_at")),
        "licence": LicenseAgreement.objects.get(team=crew.team).status,
        "mau": MonthlyActiveUsers.objects.filter(team=crew.team).count(),
        "audit": AuditEntry.objects.filter(team=crew.team).count(),
    }


def _json(client: Client, method: str, path: str, body: dict | None = None):
    return getattr(client, method)(path, body or {}, content_type="application/json")


@dataclass(frozen=True)
class Action:
    name: str
    allowed: set[str]
    run: Callable  # (crew, client) -> response
    api: bool = False  # also run through an API key
    writes: bool = True


A = Action
ACTIONS = [
    # Billing: owners, admins and billing members.
    A("billing page", BILLING_ROLES, lambda c, cl: cl.get("/billing/"), writes=False),
    A("invoices (API)", BILLING_ROLES, lambda c, cl: cl.get("/api/v1/invoices"), api=True, writes=False),
    A("cancel (page)", BILLING_ROLES, lambda c, cl: cl.post("/billing/cancel/")),
    A(
        "cancel (API)",
        BILLING_ROLES,
        lambda c, cl: _json(cl, "post", "/api/v1/subscription", {"cancel": True}),
        api=True,
    ),
    A("checkout page", BILLING_ROLES, lambda c, cl: cl.get("/billing/checkout/plus/"), writes=False),
    A(
        "spend cap (API)",
        BILLING_ROLES,
        lambda c, cl: _json(cl, "put", "/api/v1/subscription/spend-cap", {"amount_cents": 100_000, "hard": True}),
        api=True,
    ),
    A("spend cap (dashboard)", BILLING_ROLES, lambda c, cl: cl.post("/dashboard/", {"amount": "1000", "mode": "hard"})),
    # Keys: everyone makes their own; owners and admins revoke anyone's.
    A("create a key (API)", EVERYONE, lambda c, cl: _json(cl, "post", "/api/v1/keys", {"name": "mine"}), api=True),
    A("create a key (page)", EVERYONE, lambda c, cl: cl.post("/keys/", {"name": "mine"})),
    A(
        "revoke the owner's key (API)",
        MANAGERS,
        lambda c, cl: cl.delete(f"/api/v1/keys/{c.owner_key.pk}"),
        api=True,
    ),
    A("revoke the owner's key (page)", MANAGERS, lambda c, cl: cl.post(f"/keys/{c.owner_key.pk}/revoke/")),
    # Members and invitations: everyone sees the members; owners and admins run them; owners, owners.
    A("members (API)", EVERYONE, lambda c, cl: cl.get("/api/v1/team/members"), api=True, writes=False),
    A("members page", EVERYONE, lambda c, cl: cl.get(f"/teams/{c.team.slug}/members/"), writes=False),
    A("invitations (API)", MANAGERS, lambda c, cl: cl.get("/api/v1/team/invitations"), api=True, writes=False),
    A(
        "invite (API)",
        MANAGERS,
        lambda c, cl: _json(cl, "post", "/api/v1/team/invitations", {"email": "new@example.com", "role": "member"}),
        api=True,
    ),
    A(
        "invite (page)",
        MANAGERS,
        lambda c, cl: cl.post(f"/teams/{c.team.slug}/invitations/", {"email": "new@example.com", "role": "member"}),
    ),
    A(
        "change a role (API)",
        MANAGERS,
        lambda c, cl: _json(cl, "patch", f"/api/v1/team/members/{c.target.pk}", {"role": "billing"}),
        api=True,
    ),
    A(
        "change a role (page)",
        MANAGERS,
        lambda c, cl: cl.post(f"/teams/{c.team.slug}/members/{c.target.pk}/role/", {"role": "billing"}),
    ),
    A("remove a member (API)", MANAGERS, lambda c, cl: cl.delete(f"/api/v1/team/members/{c.target.pk}"), api=True),
    A("remove a member (page)", MANAGERS, lambda c, cl: cl.post(f"/teams/{c.team.slug}/members/{c.target.pk}/remove/")),
    A(
        "make an owner (API)",
        {"owner"},
        lambda c, cl: _json(cl, "patch", f"/api/v1/team/members/{c.target.pk}", {"role": "owner"}),
        api=True,
    ),
    A(
        "transfer ownership (page)",
        {"owner"},
        lambda c, cl: cl.post(f"/teams/{c.team.slug}/transfer/", {"member": c.target.pk}),
    ),
    # Licences: owners and admins.
    A("licence request (API)", MANAGERS, lambda c, cl: cl.post("/api/v1/license/request"), api=True),
    A(
        "MAU report (API)",
        MANAGERS,
        lambda c, cl: _json(cl, "post", "/api/v1/mau", {"month": "2025-01", "active_users": 5}),
        api=True,
    ),
]

CASES = [
    pytest.param(action, role, door, id=f"{action.name}-{role}-{door}")
    for action in ACTIONS
    for role in ROLES
    for door in (["session", "key"] if action.api else ["session"])
]


@pytest.mark.django_db
@pytest.mark.parametrize(("action", "role", "door"), CASES)
def test_role_table(crew, action, role, door, django_capture_on_commit_callbacks):
    client = session_for(crew, role) if door == "session" else key_for(crew, role)
    before = snapshot(crew)
    with django_capture_on_commit_callbacks(execute=True):
        response = action.run(crew, client)
    if role in action.allowed:
        assert response.status_code < 400, (response.status_code, response.content[:500])
        if action.writes:
            assert snapshot(crew) != before, "an allowed change changed nothing"
    else:
        assert response.status_code == 403, (response.status_code, response.content[:500])
        assert snapshot(crew) == before
        if response["Content-Type"].startswith("application/json"):
            assert response.json()["error"]["code"] == "role_forbidden"
        else:
            assert b"Not allowed" in response.content


@pytest.mark.django_db
def test_keys_list_shows_every_key_to_owners_and_admins_and_own_keys_to_others(crew):
    for role in ROLES:
        names = {k["name"] for k in session_for(crew, role).get("/api/v1/keys").json()["results"]}
        if role in MANAGERS:
            assert {"owner's", "target's"} <= names, role
        else:
            assert "owner's" not in names and "target's" not in names, role
        page = session_for(crew, role).get("/keys/").content.decode()
        assert ("owner&#x27;s" in page) == (role in MANAGERS), role


@pytest.mark.django_db
def test_navigation_shows_billing_only_to_roles_that_see_it(crew):
    for role in ROLES:
        page = session_for(crew, role).get("/dashboard/").content.decode()
        assert ('href="/billing/"' in page) == (role in BILLING_ROLES), role
        assert ('id="spend-cap-form"' in page) == (role in BILLING_ROLES), role


@pytest.mark.django_db
def test_a_command_made_key_acts_for_the_system_and_a_removed_creator_keeps_nothing(crew):
    # No creator: the system (an operator's command); every role check passes, scopes still apply.
    _, secret = account_services.api_key_create(team=crew.team, name="ops", scopes=["read", "manage"])
    ops = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert _json(ops, "patch", f"/api/v1/team/members/{crew.target.pk}", {"role": "admin"}).status_code == 200
    # The admin's manage key works until the admin is demoted; then it acts as a member.
    admins = key_for(crew, "admin")
    assert _json(admins, "post", "/api/v1/team/invitations", {"email": "x@example.com"}).status_code == 201
    Membership.objects.filter(team=crew.team, user=crew.users["admin"]).update(role="member")
    refused = _json(admins, "post", "/api/v1/team/invitations", {"email": "y@example.com"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_forbidden"
