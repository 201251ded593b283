"""A subscriber's account pages in a real browser: sign-up, email confirmation, log-out, password reset.

Each step is checked twice: on the page (what the person sees) and in the database (what happened).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import (
    assert_page_health,
    fill_fields,
    form_with,
    link_in_email,
    main_text,
    path_of,
    submit_form_with,
)

pytestmark = pytest.mark.e2e

CONFIRM_LINK = r"/accounts/confirm-email/[^/]+/$"
RESET_LINK = r"/accounts/password/reset/key/[^/]+/$"
LOGIN_FAILED = re.compile(r"not correct|incorrect|invalid", re.I)


def _user_model():
    from django.contrib.auth import get_user_model

    return get_user_model()


def _sign_up(page, *, email: str, password: str, password2: str | None = None) -> None:
    page.goto("/accounts/signup/")
    fill_fields(page, email=email, password1=password, password2=password if password2 is None else password2)
    submit_form_with(page, "password1")


def _log_in(page, *, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    fill_fields(page, login=email, password=password)
    submit_form_with(page, "login")


def test_new_user_journey(page, shot, seeded_catalog, mailoutbox):
    from allauth.account.models import EmailAddress

    from accounts.selectors import team_for_user
    from tiers.selectors import subscription_current

    email = "ada.lovelace@example.com"
    password = "Analytical-Engine-1843"
    new_password = "Difference-Engine-1822"
    User = _user_model()

    # --- Pricing: the public tiers with their prices; Enterprise is not public.
    page.goto("/pricing/")
    for slug, name, price in [("free", "Free", "Free"), ("plus", "Plus", "$20.00"), ("pro", "Pro", "$200.00")]:
        card = page.locator(f"[data-tier='{slug}']")
        expect(card).to_have_count(1)
        expect(card.get_by_role("heading", name=name, exact=True)).to_be_visible()
        expect(card).to_contain_text(price)
    expect(page.locator("[data-tier='enterprise']")).to_have_count(0)
    expect(page.get_by_role("heading", name="Enterprise")).to_have_count(0)
    assert "$5,000.00" not in main_text(page)
    shot("pricing")

    # --- Sign up, from the free tier's call to action on the pricing page.
    with page.expect_navigation():
        page.locator("[data-tier='free']").get_by_role("link").first.click()
    assert path_of(page.url) == "/accounts/signup/"
    fill_fields(page, email=email, password1=password, password2=password)
    shot("signup-filled")
    submit_form_with(page, "password1")
    assert path_of(page.url) == "/accounts/confirm-email/", page.url
    assert re.search(r"sent.*e-?mail|verif", main_text(page), re.I | re.S), main_text(page)
    shot("verification-sent")

    user = User.objects.get(email=email)
    assert not EmailAddress.objects.get(user=user, email=email).verified
    team = team_for_user(user=user)
    assert team is not None and team.is_personal
    assert subscription_current(team=team).tier.slug == "free"

    # --- Confirm the email address from the link in the email: logged in on confirmation.
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [email]
    page.goto(link_in_email(mailoutbox[0], CONFIRM_LINK))
    expect(page.get_by_text(email).first).to_be_visible()
    shot("confirm-email")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"confirm", re.I)).click()
    assert EmailAddress.objects.get(user=user, email=email).verified
    if path_of(page.url) != "/dashboard/":
        page.goto("/dashboard/")
    assert path_of(page.url) == "/dashboard/", page.url

    # --- The dashboard shows the free tier.
    expect(page.locator("#subscription [data-tier='free']")).to_be_visible()
    expect(page.locator("#subscription")).to_contain_text("Free")
    shot("dashboard-free")

    # --- Log out with the nav's POST form.
    with page.expect_navigation():
        page.locator("#nav-logout").click()
    expect(page.locator("#nav-logout")).to_have_count(0)
    page.goto("/dashboard/")
    assert path_of(page.url) == "/accounts/login/", "the dashboard must ask a logged-out visitor to log in"
    shot("logged-out")

    # --- Password reset by email.
    page.goto("/accounts/password/reset/")
    fill_fields(page, email=email)
    submit_form_with(page, "email")
    assert path_of(page.url) == "/accounts/password/reset/done/", page.url
    shot("reset-requested")
    assert len(mailoutbox) == 2
    assert mailoutbox[1].to == [email]
    page.goto(link_in_email(mailoutbox[1], RESET_LINK))
    # allauth moves the key out of the URL into the session, then shows the form.
    expect(page.locator("[name='password1']")).to_be_visible()
    fill_fields(page, password1=new_password, password2=new_password)
    shot("reset-new-password")
    submit_form_with(page, "password1")
    shot("reset-done")
    user.refresh_from_db()
    assert user.check_password(new_password)
    assert not user.check_password(password)

    # --- The old password no longer works, and says so.
    _log_in(page, email=email, password=password)
    assert path_of(page.url) == "/accounts/login/"
    assert LOGIN_FAILED.search(main_text(page)), main_text(page)
    expect(page.locator("#nav-logout")).to_have_count(0)
    shot("login-old-password-refused")

    # --- The new one does.
    _log_in(page, email=email, password=new_password)
    assert path_of(page.url) == "/dashboard/", page.url
    expect(page.locator("#subscription [data-tier='free']")).to_be_visible()
    shot("login-new-password-dashboard")

    assert_page_health(page)


def test_bad_input_in_browser(page, shot, seeded_catalog, mailoutbox):
    from allauth.account.models import EmailAddress

    from tiers import services as tier_services

    User = _user_model()
    taken = tier_services.user_create(email="taken@example.com", password="Taken-Account-Pass-77")
    users_before = User.objects.count()

    # --- Duplicate email, as typed and in other case: no second user, and the page does not reveal that
    # the address has an account (ACCOUNT_PREVENT_ENUMERATION): the same "check your email" page as for a
    # new address, no form error.
    for duplicate in ["taken@example.com", "Taken@Example.COM"]:
        _sign_up(page, email=duplicate, password="Another-Good-Pass-1234")
        assert path_of(page.url) == "/accounts/confirm-email/", page.url
        assert "already" not in main_text(page).lower()
        assert User.objects.count() == users_before
        assert User.objects.filter(email__iexact="taken@example.com").count() == 1
    mailoutbox.clear()
    shot("signup-duplicate-email")

    # --- Weak or mismatched passwords: a form error, nothing created.
    for weak, expected in [
        ("password", r"too (short|common)"),
        ("12345678", r"too short|numeric|too common"),
        ("newcomer@example.com", r"too similar|too short"),
    ]:
        _sign_up(page, email="newcomer@example.com", password=weak)
        assert path_of(page.url) == "/accounts/signup/", page.url
        expect(form_with(page, "password1")).to_contain_text(re.compile(expected, re.I))
        assert not User.objects.filter(email="newcomer@example.com").exists()
        assert not EmailAddress.objects.filter(email="newcomer@example.com").exists()
    shot("signup-weak-password")
    _sign_up(page, email="newcomer@example.com", password="Good-Pass-But-1234", password2="Good-Pass-But-4321")
    expect(form_with(page, "password1")).to_contain_text(re.compile(r"same password", re.I))
    assert not User.objects.filter(email="newcomer@example.com").exists()
    assert User.objects.count() == users_before
    assert mailoutbox == []
    shot("signup-password-mismatch")

    # --- Wrong logins: an error, no session.
    for email, password in [("taken@example.com", "Wrong-Password-000"), ("nobody@example.com", "Whatever-Pass-111")]:
        _log_in(page, email=email, password=password)
        assert path_of(page.url) == "/accounts/login/", page.url
        assert LOGIN_FAILED.search(main_text(page)), main_text(page)
        expect(page.locator("#nav-logout")).to_have_count(0)
    shot("login-wrong-password")
    taken.refresh_from_db()
    assert taken.last_login is None

    # --- Tampered confirmation links: "expired or invalid", nothing verified.
    _sign_up(page, email="newcomer@example.com", password="Good-Pass-But-1234")
    assert path_of(page.url) == "/accounts/confirm-email/"
    newcomer = User.objects.get(email="newcomer@example.com")
    assert len(mailoutbox) == 1
    real_link = link_in_email(mailoutbox[0], CONFIRM_LINK)
    key = real_link.rstrip("/").rsplit("/", 1)[1]
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    verified_before = EmailAddress.objects.filter(verified=True).count()
    for tampered in ["/accounts/confirm-email/garbage/", f"/accounts/confirm-email/{flipped}/"]:
        page.goto(tampered)
        assert re.search(r"expired|invalid", main_text(page), re.I), main_text(page)
        expect(page.get_by_role("button", name=re.compile(r"confirm", re.I))).to_have_count(0)
        assert not EmailAddress.objects.get(user=newcomer).verified
    shot("confirm-email-tampered")
    assert EmailAddress.objects.filter(verified=True).count() == verified_before

    # Unverified, so logging in with the right password only leads back to "check your email".
    _log_in(page, email="newcomer@example.com", password="Good-Pass-But-1234")
    assert path_of(page.url) == "/accounts/confirm-email/", page.url
    expect(page.locator("#nav-logout")).to_have_count(0)
    assert not EmailAddress.objects.get(user=newcomer).verified
    shot("login-unverified")

    assert_page_health(page)
