from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from accounts import extensions, invitations, services, teams
from accounts.decorators import forbidden_page, team_page
from accounts.forms import ApiKeyCreateForm, InvitationForm, MemberRoleForm, TeamCreateForm
from accounts.models import Membership, Team
from accounts.roles import RoleForbidden, TeamAction, role_allows
from accounts.selectors import (
    CURRENT_TEAM_SESSION_KEY,
    api_key_get_visible,
    api_key_list,
    api_key_list_visible,
    invitation_list,
    team_member_list,
)
from core.errors import ApplicationError

# The new secret is kept in the session just long enough to show it once after the redirect.
_NEW_SECRET = "tierlab_new_api_key_secret"  # noqa: S105 (a session key name, not a secret)


@team_page(TeamAction.KEYS_OWN)
def keys(request: HttpRequest) -> HttpResponse:
    team = request.team
    can_grant_manage = services.api_key_can_grant_manage(user=request.user, team=team)
    form = ApiKeyCreateForm(request.POST or None, can_grant_manage=can_grant_manage)
    # A playground-only tier has no API access: the page says so instead of offering the form (the
    # service refuses a POST all the same, as the account API and the create_api_key command do).
    api_access_refusal = extensions.api_access_refusal(team=team)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            key, secret = services.api_key_create(
                team=team,
                name=form.cleaned_data["name"],
                expires_at=form.cleaned_data["expires_at"],
                scopes=form.cleaned_data["scopes"] or None,  # none ticked: the default, model + read
                created_by=request.user,
            )
        except services.ApiAccessNotIncluded as error:
            api_access_refusal, status = error.message, error.status
        else:
            request.session[_NEW_SECRET] = {"id": key.pk, "secret": secret}
            return redirect("keys")
    new_secret = request.session.pop(_NEW_SECRET, None)
    return render(
        request,
        "accounts/keys.html",
        {
            "team": team,
            "form": form,
            "keys": api_key_list_visible(team=team, actor=request.user),
            "new_secret": new_secret,
            "sees_all_keys": can_grant_manage,  # owners and admins: every key of the team
            "api_access_refusal": api_access_refusal,
        },
        status=400 if form.errors else status,
    )


@team_page(TeamAction.KEYS_OWN)
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET asks for confirmation (a page, so it works without JavaScript); POST revokes."""
    # Another team's key: 404; a teammate's, for a role that sees only its own keys: 403.
    key = api_key_get_visible(team=request.team, actor=request.user, key_id=key_id)
    if request.method == "GET":
        if key.status == "revoked":
            messages.info(request, f"“{key.name}” is already revoked.")
            return redirect("keys")
        return render(request, "accounts/key_revoke.html", {"team": request.team, "key": key})
    services.api_key_revoke(key=key, actor=request.user)
    messages.success(request, f"Revoked “{key.name}”. Requests with it are refused within seconds.")
    return redirect("keys")


# --- Teams: create, switch, members and invitations ----------------------------------------------------
# Thin, as the keys page: each POST calls one service of accounts.teams or accounts.invitations, which
# check the acting user's role; a refusal comes back as a message (or the 403 page).


@login_required
def team_new(request: HttpRequest) -> HttpResponse:
    form = TeamCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        team = services.team_create(name=form.cleaned_data["name"], owner=request.user)
        request.session[CURRENT_TEAM_SESSION_KEY] = team.pk
        messages.success(request, f"Created {team.name}. You are its owner; invite your colleagues here.")
        return redirect("team-members", slug=team.slug)
    return render(request, "accounts/team_new.html", {"form": form}, status=400 if form.errors else 200)


# Pages that act on "the current team" and exist for every team: switching keeps you on them.
_SWITCH_KEEPS = {"dashboard", "keys", "billing", "playground"}


@login_required
@require_POST
def team_switch(request: HttpRequest) -> HttpResponse:
    """Make another of your teams the current one (kept in the session): the dashboard, keys, billing
    and playground pages then act on it."""
    team = get_object_or_404(Team, slug=request.POST.get("team", ""), memberships__user=request.user)
    request.session[CURRENT_TEAM_SESSION_KEY] = team.pk
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = ""
    try:
        keep = bool(target) and resolve(target.split("?")[0]).url_name in _SWITCH_KEEPS
    except Resolver404:
        keep = False
    messages.success(request, f"You are now working in {team.name}.")
    return redirect(target if keep else "dashboard")


def _my_team(request: HttpRequest, slug: str) -> tuple[Team, str]:
    """The team of a /teams/<slug>/ page and the user's role in it; 404 unless they are a member."""
    membership = get_object_or_404(Membership.objects.select_related("team"), team__slug=slug, user=request.user)
    return membership.team, membership.role


def _members_page(request, team: Team, role: str, *, invite_form=None, status: int = 200) -> HttpResponse:
    manages = role_allows(role, TeamAction.MEMBERS_MANAGE)
    owns = role_allows(role, TeamAction.OWNERSHIP)
    members = list(team_member_list(team=team))
    return render(
        request,
        "accounts/team_members.html",
        {
            "team": team,
            "role": role,
            "manages": manages,
            "owns": owns,
            "members": members,
            "owners": sum(1 for m in members if m.role == Membership.Role.OWNER),
            "role_choices": [c for c in Membership.Role.choices if owns or c[0] != Membership.Role.OWNER],
            "invitations": invitation_list(team=team, open_only=True) if manages else [],
            "invite_form": invite_form or InvitationForm(can_make_owners=owns),
            "now": timezone.now(),
        },
        status=status,
    )


@login_required
def team_members(request: HttpRequest, slug: str) -> HttpResponse:
    team, role = _my_team(request, slug)
    return _members_page(request, team, role)


def _refusal(request: HttpRequest, error: ApplicationError) -> None:
    messages.error(request, error.message)


@login_required
@require_POST
def team_invite(request: HttpRequest, slug: str) -> HttpResponse:
    team, role = _my_team(request, slug)
    form = InvitationForm(request.POST, can_make_owners=role_allows(role, TeamAction.OWNERSHIP))
    status = 400
    if form.is_valid():
        try:
            invitation = invitations.invitation_create(
                team=team, email=form.cleaned_data["email"], role=form.cleaned_data["role"], actor=request.user
            )
        except RoleForbidden as error:
            return forbidden_page(request, error)
        except ApplicationError as error:
            form.add_error("email" if error.extra.get("field") == "email" else None, error.message)
            status = error.status
        else:
            messages.success(
                request, f"Invited {invitation.email} as {invitation.get_role_display()}: the link is on its way."
            )
            return redirect("team-members", slug=team.slug)
    return _members_page(request, team, role, invite_form=form, status=status)


def _invitation_action(request: HttpRequest, slug: str, invitation_id: int, service, done: str) -> HttpResponse:
    team, _ = _my_team(request, slug)
    invitation = get_object_or_404(invitation_list(team=team), pk=invitation_id)
    try:
        service(invitation=invitation, actor=request.user)
    except RoleForbidden as error:
        return forbidden_page(request, error)
    except ApplicationError as error:
        _refusal(request, error)
    else:
        messages.success(request, done.format(email=invitation.email))
    return redirect("team-members", slug=team.slug)


@login_required
@require_POST
def team_invitation_revoke(request: HttpRequest, slug: str, invitation_id: int) -> HttpResponse:
    return _invitation_action(
        request, slug, invitation_id, invitations.invitation_revoke, "Revoked the invitation of {email}."
    )


@login_required
@require_POST
def team_invitation_resend(request: HttpRequest, slug: str, invitation_id: int) -> HttpResponse:
    return _invitation_action(
        request,
        slug,
        invitation_id,
        invitations.invitation_resend,
        "Sent {email} a new link; the old one no longer works.",
    )


@login_required
@require_POST
def team_member_role(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    team, role = _my_team(request, slug)
    membership = get_object_or_404(team_member_list(team=team), pk=member_id)
    form = MemberRoleForm(request.POST, can_make_owners=role_allows(role, TeamAction.OWNERSHIP))
    if not form.is_valid():
        return forbidden_page(request, RoleForbidden("Only owners make owners."))
    try:
        teams.membership_role_set(membership=membership, role=form.cleaned_data["role"], actor=request.user)
    except RoleForbidden as error:
        return forbidden_page(request, error)
    except ApplicationError as error:
        _refusal(request, error)
    else:
        messages.success(request, f"{membership.user.email} is now {form.cleaned_data['role']}.")
    return redirect("team-members", slug=team.slug)


@login_required
def team_member_remove(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    """GET: the confirmation (names the keys that will be revoked); POST: remove (or leave, for oneself)."""
    team, role = _my_team(request, slug)
    membership = get_object_or_404(team_member_list(team=team), pk=member_id)
    leaving = membership.user_id == request.user.pk
    if request.method == "POST":
        try:
            removed = teams.membership_remove(membership=membership, actor=request.user)
        except RoleForbidden as error:
            return forbidden_page(request, error)
        except ApplicationError as error:
            _refusal(request, error)
            return redirect("team-members", slug=team.slug)
        keys = f" {removed.keys_revoked} API key{'s' if removed.keys_revoked != 1 else ''} revoked."
        if leaving:
            request.session.pop(CURRENT_TEAM_SESSION_KEY, None)
            messages.success(request, f"You left {team.name}.{keys}")
            return redirect("dashboard")
        messages.success(request, f"Removed {membership.user.email} from {team.name}.{keys}")
        return redirect("team-members", slug=team.slug)
    if not leaving and not role_allows(role, TeamAction.MEMBERS_MANAGE):
        return forbidden_page(request, RoleForbidden("Only owners and admins remove members."))
    keys = api_key_list(team=team).filter(created_by=membership.user, revoked_at__isnull=True)
    return render(
        request,
        "accounts/team_member_remove.html",
        {"team": team, "membership": membership, "leaving": leaving, "keys": list(keys)},
    )


@login_required
@require_POST
def team_transfer(request: HttpRequest, slug: str) -> HttpResponse:
    team, _ = _my_team(request, slug)
    target = get_object_or_404(team_member_list(team=team), pk=request.POST.get("member") or 0)
    try:
        teams.team_ownership_transfer(team=team, to=target, actor=request.user)
    except RoleForbidden as error:
        return forbidden_page(request, error)
    except ApplicationError as error:
        _refusal(request, error)
    else:
        messages.success(request, f"{target.user.email} owns {team.name} now; you are an admin.")
    return redirect("team-members", slug=team.slug)


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """/invitations/<token>/: who invites whom to what, and the way in. Signed out: sign in or sign up
    with the invited address (and come back here); signed in as that address: a button to join."""
    now = timezone.now()
    try:
        invitation = invitations.invitation_from_token(token, now=now)
    except ApplicationError as error:
        return render(request, "accounts/invitation.html", {"error": error}, status=error.status)
    user = request.user if request.user.is_authenticated else None
    if (
        user is not None
        and invitation.accepted_by_id == user.pk
        and Membership.objects.filter(team_id=invitation.team_id, user=user).exists()
    ):
        return redirect("team-members", slug=invitation.team.slug)
    if request.method == "POST" and user is not None:
        try:
            membership = invitations.invitation_accept(invitation=invitation, user=user, now=now)
        except ApplicationError as error:
            return render(
                request, "accounts/invitation.html", {"invitation": invitation, "error": error}, status=error.status
            )
        request.session[CURRENT_TEAM_SESSION_KEY] = membership.team_id
        messages.success(request, f"Welcome to {membership.team.name}: you joined as {membership.get_role_display()}.")
        return redirect("dashboard")
    error = invitations.invitation_accept_refusal(invitation, user=user, now=now)
    if user is None and error is None:
        # The link came to this mailbox: signing up with this address from here needs no confirmation.
        request.session[invitations.INVITED_EMAIL_SESSION_KEY] = invitation.email
    context = {
        "invitation": invitation,
        "error": error,
        "next": request.path,
        "signup_query": urlencode({"next": request.path, "email": invitation.email}),
        "login_query": urlencode({"next": request.path}),
    }
    return render(request, "accounts/invitation.html", context, status=error.status if error else 200)
