"""Sign-up, confirmation, login and password reset through the real allauth pages."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.urls import reverse

from accounts.models import Team, User
from tiers.models import Subscription

PASSWORD = "plum-orchard-42-skylight"


def _signup(client, email="new@example.com", password=PASSWORD, password2=None):
    return client.post(
        reverse("account_signup"),
        {"email": email, "password1": password, "password2": password2 or password},
    )


def _link(message) -> str:
    return re.search(r"https?://[^/\s]+(/\S+)", message.body).group(1)


@pytest.mark.django_db
def test_signup_confirm_login_shows_free_tier(client, free_tier):
    response = _signup(client)
    assert response.status_code == 302
    user = User.objects.get(email="new@example.com")
    assert Subscription.objects.get(team__memberships__user=user).tier == free_tier
    assert not EmailAddress.objects.get(user=user).verified

    # Verification is mandatory: no login before the email is confirmed.
    client.logout()
    response = client.post(reverse("account_login"), {"login": "new@example.com", "password": PASSWORD})
    assert response.status_code == 302 and "confirm-email" in response["Location"]
    assert "_auth_user_id" not in client.session

    assert len(mail.outbox) >= 1
    confirm_url = _link(mail.outbox[-1])
    assert client.get(confirm_url).status_code == 200
    response = client.post(confirm_url)
    assert response.status_code == 302
    assert EmailAddress.objects.get(user=user).verified

    client.logout()
    response = client.post(reverse("account_login"), {"login": "new@example.com", "password": PASSWORD}, follow=True)
    assert response.request["PATH_INFO"] == reverse("dashboard")
    assert b'data-tier="free"' in response.content


@pytest.mark.django_db
def test_duplicate_email_signup_changes_nothing_and_does_not_reveal_the_account(client, free_tier):
    _signup(client)
    client.logout()
    before = (User.objects.count(), Team.objects.count(), Subscription.objects.count())
    response = _signup(client, email="NEW@example.com")
    # ACCOUNT_PREVENT_ENUMERATION: the same "check your email" page as for a new address.
    assert response.status_code == 302 and "confirm-email" in response["Location"]
    assert (User.objects.count(), Team.objects.count(), Subscription.objects.count()) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("password", "password2", "message"),
    [
        ("short1", None, "too short"),
        ("password123", None, "too common"),
        ("1234567890123", None, "entirely numeric"),
        (PASSWORD, PASSWORD + "x", "same password"),
    ],
)
def test_weak_or_mismatched_password_is_refused(client, free_tier, password, password2, message):
    response = _signup(client, password=password, password2=password2)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists() and not Team.objects.exists()


@pytest.mark.django_db
def test_wrong_login_says_so(client, free_tier):
    _signup(client)
    client.logout()
    response = client.post(reverse("account_login"), {"login": "new@example.com", "password": "wrong-password-0"})
    assert response.status_code == 200
    assert "not correct" in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_tampered_confirmation_link_verifies_nothing(client, free_tier):
    _signup(client)
    key = _link(mail.outbox[-1]).rstrip("/").rsplit("/", 1)[-1]
    tampered = reverse("account_confirm_email", args=[key[:-2] + ("AA" if not key.endswith("AA") else "BB")])
    response = client.get(tampered)
    assert response.status_code == 200
    assert "expired or is invalid" in response.content.decode()
    client.post(tampered)
    assert not EmailAddress.objects.get(email="new@example.com").verified


@pytest.mark.django_db
def test_password_reset_by_email(client, free_tier):
    _signup(client)
    client.post(_link(mail.outbox[-1]))  # confirm
    client.logout()
    mail.outbox.clear()
    response = client.post(reverse("account_reset_password"), {"email": "new@example.com"})
    assert response.status_code == 302
    reset_url = _link(mail.outbox[-1])
    response = client.get(reset_url, follow=True)  # allauth moves the key into the session
    form_url = response.request["PATH_INFO"]
    new_password = "fresh-meadow-77-lantern"
    response = client.post(form_url, {"password1": new_password, "password2": new_password})
    assert response.status_code == 302
    assert User.objects.get(email="new@example.com").check_password(new_password)


@pytest.mark.django_db
def test_pages_render_for_visitors(client, catalog):
    for name in ["home", "pricing", "account_signup", "account_login", "account_reset_password"]:
        response = client.get(reverse(name))
        assert response.status_code == 200, name
        assert b"/static/css/tierlab.css" in response.content


@pytest.mark.django_db
def test_dashboard_requires_login(client):
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302 and reverse("account_login") in response["Location"]


@pytest.mark.django_db
def test_logout_is_a_post_with_csrf(free_tier):
    from django.test import Client

    from tiers.services import user_create

    user_create(email="csrf@example.com", password=PASSWORD)
    client = Client(enforce_csrf_checks=True)
    client.login(email="csrf@example.com", password=PASSWORD)
    assert client.post(reverse("account_logout")).status_code == 403  # no token: refused
    assert "_auth_user_id" in client.session
