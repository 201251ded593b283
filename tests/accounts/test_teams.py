"""Teams (issue 14): the last owner, ownership transfer, removing a member (their keys revoked, audited),
several teams per user with a current team in the session, operators' personal teams, the team API
and the admin's members and invitations."""

from __future__ import annotations

import json

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils.html import escape

from accounts import invitations, teams
from accounts.models import ApiKey, AuditEntry, Invitation, Membership, Team, User
from accounts.selectors import CURRENT_TEAM_SESSION_KEY, api_key_cache_clear, team_for_user
from accounts.services import api_key_create
from tiers import services as tier_services
from tiers.models import Subscription

SMALL = "Llama-3.3-8B-Instruct"


@pytest.fixture
def crew(catalog):
    owner = tier_services.user_create(email="owner@example.com")
    team = team_for_user(user=owner)
    colleague = tier_services.user_create(email="colleague@example.com")
    membership = Membership.objects.create(team=team, user=colleague, role="admin")
    return team, owner, colleague, membership


def _session(user, team=None) -> Client:
    client = Client()
    client.force_login(user)
    if team is not None:
        session = client.session
        session[CURRENT_TEAM_SESSION_KEY] = team.pk
        session.save()
    return client


@pytest.mark.django_db
def test_the_last_owner_can_neither_leave_nor_be_demoted(crew):
    team, owner, colleague, _ = crew
    mine = Membership.objects.get(team=team, user=owner)
    client = _session(owner)
    demoted = client.patch(f"/api/v1/team/members/{mine.pk}", {"role": "admin"}, content_type="application/json")
    assert demoted.status_code == 409 and demoted.json()["error"]["code"] == "last_owner"
    left = client.delete(f"/api/v1/team/members/{mine.pk}")
    assert left.status_code == 409
    assert Membership.objects.get(pk=mine.pk).role == "owner"
    # With a second owner, the first may step down, and then leave.
    promoted = client.patch(
        f"/api/v1/team/members/{Membership.objects.get(team=team, user=colleague).pk}",
        {"role": "owner"},
        content_type="application/json",
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "owner"
    stepped_down = client.patch(f"/api/v1/team/members/{mine.pk}", {"role": "member"}, content_type="application/json")
    assert stepped_down.json()["role"] == "member"
    assert client.delete(f"/api/v1/team/members/{mine.pk}").status_code == 200
    assert not Membership.objects.filter(pk=mine.pk).exists()
    actions = list(AuditEntry.objects.filter(team=team).order_by("id").values_list("action", flat=True))
    assert actions == ["role_changed", "role_changed", "member_left"]


@pytest.mark.django_db
def test_ownership_transfer_swaps_roles_in_one_step_and_is_audited(crew):
    team, owner, _colleague, membership = crew
    response = _session(owner).post(f"/teams/{team.slug}/transfer/", {"member": membership.pk})
    assert response.status_code == 302
    roles = dict(Membership.objects.filter(team=team).values_list("user__email", "role"))
    assert roles == {"owner@example.com": "admin", "colleague@example.com": "owner"}
    entry = AuditEntry.objects.get(team=team, action="ownership_transferred")
    assert entry.actor == owner and "colleague@example.com" in entry.description
    # Only owners transfer: the former owner, now an admin, cannot take it back.
    again = Membership.objects.get(team=team, user=owner)
    with pytest.raises(teams.ApplicationError) as refused:
        teams.team_ownership_transfer(team=team, to=again, actor=owner)
    assert refused.value.code == "role_forbidden"


@pytest.mark.django_db
def test_removing_a_member_revokes_their_keys_says_so_first_and_is_audited(crew, settings):
    team, owner, colleague, membership = crew
    theirs, secret = api_key_create(team=team, name="colleague app", created_by=colleague)
    mine, _ = api_key_create(team=team, name="owner app", created_by=owner)
    elsewhere, _ = api_key_create(team=team_for_user(user=colleague), name="personal", created_by=colleague)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "Hi"}]})
    assert api.post("/v1/chat/completions", body, content_type="application/json").status_code == 200

    client = _session(owner)
    confirm = client.get(f"/teams/{team.slug}/members/{membership.pk}/remove/").content.decode()
    assert "1 API key" in confirm and "colleague app" in confirm and "will be revoked" in confirm
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert ApiKey.objects.get(pk=theirs.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=mine.pk).revoked_at is None  # someone else's key stays
    assert ApiKey.objects.get(pk=elsewhere.pk).revoked_at is None  # their keys of other teams stay
    entry = AuditEntry.objects.get(team=team, action="member_removed")
    assert entry.actor == owner and entry.data["keys_revoked"] == 1
    api_key_cache_clear()  # other processes see it within TIERLAB_AUTH_CACHE_SECONDS; this one at once
    refused = api.post("/v1/chat/completions", body, content_type="application/json")
    assert refused.status_code == 401


@pytest.mark.django_db
def test_several_teams_the_switcher_and_an_api_key_acting_for_its_own_team(crew):
    team, _owner, colleague, _ = crew
    client = _session(colleague)
    personal = team_for_user(user=colleague)
    # The colleague starts in their personal team; the bar lists both teams.
    page = client.get("/dashboard/").content.decode()
    assert escape(personal.name) in page and f'value="{team.slug}"' in page
    # Create a third team: its owner, on the free tier, and current at once.
    created = client.post("/teams/new/", {"name": "Acme Research"})
    acme = Team.objects.get(name="Acme Research")
    assert created["Location"] == f"/teams/{acme.slug}/members/"
    assert Membership.objects.get(team=acme, user=colleague).role == "owner"
    assert Subscription.objects.current().get(team=acme).tier.slug == "free"
    assert AuditEntry.objects.get(team=acme).action == "team_created"
    # Switch to the owner's team: the keys page makes keys there; the dashboard shows it.
    switched = client.post("/teams/switch/", {"team": team.slug, "next": "/keys/"})
    assert switched["Location"] == "/keys/"
    client.post("/keys/", {"name": "in the shared team"})
    assert ApiKey.objects.get(name="in the shared team").team == team
    assert escape(team.name) in client.get("/dashboard/").content.decode()
    # Another page than the team-wide ones goes to the dashboard; a team you are not in is not found.
    assert (
        client.post("/teams/switch/", {"team": acme.slug, "next": "/billing/invoices/X/"})["Location"] == "/dashboard/"
    )
    stranger = tier_services.user_create(email="stranger@example.com")
    assert client.post("/teams/switch/", {"team": team_for_user(user=stranger).slug}).status_code == 404
    # An API key acts for its own team, whatever the session says.
    _, secret = api_key_create(team=team, name="ci", created_by=colleague)
    me = Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/me").json()
    assert me["team"]["id"] == team.pk and me["role"] == "admin"
    assert client.get("/api/v1/me").json()["team"]["id"] == acme.pk
    # Removed from the current team: the session falls back to the personal team.
    client.post("/teams/switch/", {"team": team.slug})
    Membership.objects.filter(team=team, user=colleague).delete()
    assert client.get("/api/v1/team").json()["id"] == personal.pk


@pytest.mark.django_db
def test_team_api_reads_the_team_and_members(crew):
    team, _owner, colleague, membership = crew
    client = _session(colleague, team)
    body = client.get("/api/v1/team").json()
    assert (body["id"], body["slug"], body["role"], body["is_personal"]) == (team.pk, team.slug, "admin", True)
    members = client.get("/api/v1/team/members").json()["results"]
    assert [(m["email"], m["role"]) for m in members] == [
        ("owner@example.com", "owner"),
        ("colleague@example.com", "admin"),
    ]
    assert client.get(f"/api/v1/team/members/{membership.pk}").json()["email"] == "colleague@example.com"
    other = team_for_user(user=colleague)
    other_membership = Membership.objects.get(team=other)
    assert client.get(f"/api/v1/team/members/{other_membership.pk}").status_code == 404  # not this team's
    bad = client.patch(f"/api/v1/team/members/{membership.pk}", {"role": "boss"}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "role"


@pytest.mark.django_db
def test_createsuperuser_and_the_demo_operator_get_a_personal_team(catalog, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "an-operator-password-1")
    call_command("createsuperuser", "--noinput", "--email", "ops@example.com", verbosity=0)
    operator = User.objects.get(email="ops@example.com")
    team = team_for_user(user=operator)
    assert team.is_personal and Subscription.objects.current().get(team=team).tier.slug == "free"
    client = _session(operator)
    assert client.get("/billing/").status_code == 200
    assert client.get("/api/v1/me").json()["role"] == "owner"
    # An operator made before this rule (no team) gets one when the demo seed runs over it.
    old = User.objects.create(email="operator@tierlab.localhost", is_staff=True, is_superuser=True)
    call_command("seed_demo", verbosity=0)
    assert team_for_user(user=old).is_personal


@pytest.mark.django_db
def test_admin_shows_members_and_invitations_and_changes_roles_with_an_audit_entry(crew, admin_client, admin_user):
    team, owner, _colleague, membership = crew
    invitations.invitation_create(team=team, email="pending@example.com", role="billing", actor=owner)
    page = admin_client.get(f"/admin/accounts/team/{team.pk}/change/").content.decode()
    assert "colleague@example.com" in page and "pending@example.com" in page
    owner_row = Membership.objects.get(team=team, user=owner)
    form = {
        "name": team.name,
        "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(owner_row.pk), "memberships-0-team": str(team.pk), "memberships-0-role": "owner",
        "memberships-1-id": str(membership.pk), "memberships-1-team": str(team.pk), "memberships-1-role": "billing",
        "invitations-TOTAL_FORMS": "1", "invitations-INITIAL_FORMS": "1",
        "invitations-MIN_NUM_FORMS": "0", "invitations-MAX_NUM_FORMS": "1000",
        "invitations-0-id": str(Invitation.objects.get(team=team).pk), "invitations-0-team": str(team.pk),
    }  # fmt: skip
    response = admin_client.post(f"/admin/accounts/team/{team.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert Membership.objects.get(pk=membership.pk).role == "billing"
    entry = AuditEntry.objects.get(team=team, action="role_changed")
    assert entry.actor == admin_user and entry.data["operator"] is True
    # Demoting the last owner is a form error; nothing changes.
    form["memberships-0-role"] = "admin"
    refused = admin_client.post(f"/admin/accounts/team/{team.pk}/change/", form)
    assert refused.status_code == 200 and b"at least one owner" in refused.content
    assert Membership.objects.get(pk=owner_row.pk).role == "owner"


@pytest.mark.django_db
def test_team_emails_link_absolutely(crew, settings):
    from accounts.emails import team_email_send

    settings.TIERLAB_SITE_URL = "https://tierlab.example"
    team, *_ = crew
    mail.outbox.clear()
    assert team_email_send(
        team_id=team.pk,
        subject="Test",
        template="billing/email/downgraded.txt",
        context={
            "attempts": 3,
            "amount": "$1",
            "invoice": {"number": "T-1"},
            "team_name": team.name,
            "tier_name": "Free",
        },
    )
    assert "https://tierlab.example/billing/" in mail.outbox[-1].body
    assert "(/billing/)" not in mail.outbox[-1].body


@pytest.mark.django_db
def test_signup_confirmation_email_names_tierlab(client, free_tier):
    client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": "plum-orchard-42", "password2": "plum-orchard-42"},
    )
    body = mail.outbox[-1].body
    assert body.startswith("Hello from TierLab!") and "127.0.0.1" not in body.splitlines()[0]
    assert "http://testserver/accounts/confirm-email/" in body


@pytest.mark.django_db
def test_a_user_added_in_the_admin_gets_a_personal_team(catalog, admin_client):
    response = admin_client.post(
        "/admin/accounts/user/add/",
        {"email": "added@example.com", "password1": "an-added-password-9", "password2": "an-added-password-9"},
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    team = team_for_user(user=User.objects.get(email="added@example.com"))
    assert team.is_personal and Subscription.objects.current().get(team=team).tier.slug == "free"
