"""Invitations (issue 14): a signed link by email that expires in 7 days, accepted signed in (or signed
up) with the invited address; revoked and re-sent links stop working; nobody joins twice or by
someone else's link. Through the pages and the account API, with the emails read from the outbox."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from accounts import invitations
from accounts.models import AuditEntry, Invitation, Membership, User
from accounts.selectors import CURRENT_TEAM_SESSION_KEY, team_for_request, team_for_user
from tiers import services as tier_services
from tiers.models import Subscription

PASSWORD = "plum-orchard-42-skylight"
SITE = "http://tierlab.test"


@pytest.fixture
def team(catalog, settings):
    settings.TIERLAB_SITE_URL = SITE
    owner = tier_services.user_create(email="owner@example.com", password=PASSWORD)
    return team_for_user(user=owner)


@pytest.fixture
def owner_client(team):
    client = Client()
    client.force_login(User.objects.get(email="owner@example.com"))
    return client


def _invite(client, team, email="colleague@example.com", role="member"):
    return client.post(f"/teams/{team.slug}/invitations/", {"email": email, "role": role})


def _link_path(message) -> str:
    match = re.search(rf"{re.escape(SITE)}(/invitations/[^/\s]+/)", message.body)
    assert match, message.body
    return match.group(1)


@pytest.mark.django_db
def test_owner_invites_from_the_team_page_and_the_email_names_tierlab_with_an_absolute_link(
    team, owner_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = _invite(owner_client, team, role="billing")
    assert response.status_code == 302
    [message] = mail.outbox
    assert message.to == ["colleague@example.com"]
    assert "TierLab" in message.subject and team.name in message.subject
    assert "TierLab" in message.body and "as Billing" in message.body
    path = _link_path(message)
    page = owner_client.get(f"/teams/{team.slug}/members/").content.decode()
    assert "colleague@example.com" in page and 'id="invitation-table"' in page
    invitation = Invitation.objects.get(team=team)
    assert (invitation.role, invitation.status) == ("billing", "pending")
    assert invitation.expires_at - invitation.sent_at == timedelta(days=7)
    assert AuditEntry.objects.filter(team=team, action="invitation_sent").count() == 1
    # The link opens for anyone (who is it for? what team?), and is accepted only signed in.
    anonymous = Client().get(path)
    assert anonymous.status_code == 200 and b"colleague@example.com" in anonymous.content


@pytest.mark.django_db
def test_sign_up_from_the_link_needs_no_second_confirmation_and_joins_with_the_role(
    team, owner_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(owner_client, team, role="member")
    path = _link_path(mail.outbox[-1])
    browser = Client()
    assert browser.get(path).status_code == 200
    signed_up = browser.post(
        f"/accounts/signup/?next={path}",
        {"email": "colleague@example.com", "password1": PASSWORD, "password2": PASSWORD, "next": path},
    )
    assert signed_up.status_code == 302 and signed_up["Location"] == path  # signed in, back to the link
    colleague = User.objects.get(email="colleague@example.com")
    assert colleague.emailaddress_set.get().verified  # the link came to this mailbox
    assert Subscription.objects.filter(team=team_for_user(user=colleague)).exists()  # their personal team too
    accepted = browser.post(path)
    assert accepted.status_code == 302 and accepted["Location"] == "/dashboard/"
    assert Membership.objects.get(team=team, user=colleague).role == "member"
    assert browser.session[CURRENT_TEAM_SESSION_KEY] == team.pk  # lands in the team
    assert escape(team.name) in browser.get("/dashboard/").content.decode()
    entry = AuditEntry.objects.get(team=team, action="member_joined")
    assert entry.actor == colleague and entry.data["role"] == "member"
    # The link is spent: opening it again leads to the team; another user cannot use it.
    assert browser.get(path)["Location"] == f"/teams/{team.slug}/members/"


@pytest.mark.django_db
def test_signing_up_from_the_link_with_another_address_is_not_verified(
    team, owner_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(owner_client, team)
    path = _link_path(mail.outbox[-1])
    browser = Client()
    browser.get(path)
    browser.post(
        "/accounts/signup/", {"email": "someone-else@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    other = User.objects.get(email="someone-else@example.com")
    assert [(a.email, a.verified) for a in other.emailaddress_set.all()] == [("someone-else@example.com", False)]
    assert not Membership.objects.filter(team=team, user=other).exists()


@pytest.mark.django_db
def test_accepting_while_signed_in_as_someone_else_is_refused_and_changes_nothing(
    team, owner_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(owner_client, team)
    path = _link_path(mail.outbox[-1])
    intruder = tier_services.user_create(email="intruder@example.com")
    browser = Client()
    browser.force_login(intruder)
    shown = browser.get(path)
    assert shown.status_code == 403 and b"invitation_wrong_email" in shown.content and b"Sign out" in shown.content
    refused = browser.post(path)
    assert refused.status_code == 403
    assert not Membership.objects.filter(team=team, user=intruder).exists()
    assert Invitation.objects.get(team=team).accepted_at is None
    assert team_for_request(_request_of(browser, intruder)) != team


def _request_of(client, user):
    class _Request:
        pass

    request = _Request()
    request.user, request.session = user, client.session
    return request


@pytest.mark.django_db
def test_an_expired_link_is_refused_by_its_signature_and_by_its_row(team, owner_client):
    invitation = invitations.invitation_create(
        team=team, email="late@example.com", role="member", actor=User.objects.get(email="owner@example.com")
    )
    path = f"/invitations/{invitations.invitation_token(invitation)}/"
    late = tier_services.user_create(email="late@example.com")
    browser = Client()
    browser.force_login(late)
    with time_machine.travel(timezone.now() + timedelta(days=7, minutes=1), tick=False):
        response = browser.post(path)
        assert response.status_code == 410 and b"expired" in response.content
    # The row's own expiry counts too, whatever the signature's age.
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = browser.post(path)
    assert response.status_code == 410 and b"invitation_expired" in response.content
    assert not Membership.objects.filter(team=team, user=late).exists()
    # Inviting the address again renews it: a new link, a new week.
    renewed = invitations.invitation_create(team=team, email="late@example.com", role="admin", actor=None)
    assert renewed.pk == invitation.pk and renewed.role == "admin" and renewed.status == "pending"
    assert browser.post(f"/invitations/{invitations.invitation_token(renewed)}/").status_code == 302
    assert Membership.objects.get(team=team, user=late).role == "admin"


@pytest.mark.django_db
def test_a_revoked_link_is_refused(team, owner_client):
    invitation = invitations.invitation_create(team=team, email="gone@example.com", role="member", actor=None)
    path = f"/invitations/{invitations.invitation_token(invitation)}/"
    assert owner_client.post(f"/teams/{team.slug}/invitations/{invitation.pk}/revoke/").status_code == 302
    gone = tier_services.user_create(email="gone@example.com")
    browser = Client()
    browser.force_login(gone)
    response = browser.post(path)
    assert response.status_code == 410 and b"invitation_revoked" in response.content
    assert not Membership.objects.filter(team=team, user=gone).exists()
    assert AuditEntry.objects.filter(team=team, action="invitation_revoked").count() == 1


@pytest.mark.django_db
def test_resending_replaces_the_link_and_extends_the_expiry(team, owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(owner_client, team)
    first = _link_path(mail.outbox[-1])
    invitation = Invitation.objects.get(team=team)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert owner_client.post(f"/teams/{team.slug}/invitations/{invitation.pk}/resend/").status_code == 302
    second = _link_path(mail.outbox[-1])
    assert first != second
    invitation.refresh_from_db()
    assert invitation.send_count == 2 and invitation.expires_at > timezone.now() + timedelta(days=6)
    assert Client().get(first).status_code == 404  # the old link no longer works
    assert Client().get(second).status_code == 200


@pytest.mark.django_db
def test_already_a_member_is_a_409_when_invited_and_when_accepting(team, owner_client):
    owner = User.objects.get(email="owner@example.com")
    colleague = tier_services.user_create(email="colleague@example.com")
    Membership.objects.create(team=team, user=colleague, role="member")
    invited = _invite(owner_client, team, email="Colleague@Example.com")
    assert invited.status_code == 409 and b"already a member" in invited.content
    api = owner_client.post(
        "/api/v1/team/invitations", {"email": "colleague@example.com", "role": "admin"}, content_type="application/json"
    )
    assert api.status_code == 409 and api.json()["error"]["code"] == "already_member"
    # An invitation made before they joined by another way: accepting it changes nothing.
    invitation = Invitation.objects.create(
        team=team, email="colleague@example.com", role="admin", invited_by=owner,
        expires_at=timezone.now() + timedelta(days=7),
    )  # fmt: skip
    browser = Client()
    browser.force_login(colleague)
    response = browser.post(f"/invitations/{invitations.invitation_token(invitation)}/")
    assert response.status_code == 409 and b"already_member" in response.content
    assert Membership.objects.get(team=team, user=colleague).role == "member"


@pytest.mark.django_db
def test_a_pending_address_is_not_invited_twice_and_a_forged_link_is_not_found(team, owner_client):
    assert _invite(owner_client, team).status_code == 302
    again = _invite(owner_client, team)
    assert again.status_code == 409 and b"pending invitation" in again.content
    assert Invitation.objects.filter(team=team).count() == 1
    token = invitations.invitation_token(Invitation.objects.get(team=team))
    assert Client().get(f"/invitations/{token[:-2]}xx/").status_code == 404
    assert Client().get("/invitations/not-a-token/").status_code == 404


@pytest.mark.django_db
def test_invitations_api_lists_creates_and_revokes(team, owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        created = owner_client.post(
            "/api/v1/team/invitations", {"email": "api@example.com", "role": "billing"}, content_type="application/json"
        )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["email"], body["role"], body["status"], body["invited_by"]) == (
        "api@example.com", "billing", "pending", "owner@example.com",
    )  # fmt: skip
    assert "token" not in body and len(mail.outbox) == 1
    listed = owner_client.get("/api/v1/team/invitations").json()
    assert [i["email"] for i in listed["results"]] == ["api@example.com"]
    revoked = owner_client.delete(f"/api/v1/team/invitations/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert owner_client.delete(f"/api/v1/team/invitations/{body['id']}").status_code == 200  # idempotent


@pytest.mark.django_db
def test_admins_cannot_invite_owners(team):
    admin = tier_services.user_create(email="admin@example.com")
    Membership.objects.create(team=team, user=admin, role="admin")
    with pytest.raises(invitations.ApplicationError) as refused:
        invitations.invitation_create(team=team, email="boss@example.com", role="owner", actor=admin)
    assert refused.value.code == "role_forbidden"
    assert invitations.invitation_create(team=team, email="peer@example.com", role="admin", actor=admin).role == "admin"
