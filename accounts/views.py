from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts import services
from accounts.forms import ApiKeyCreateForm
from accounts.selectors import api_key_list, team_for_user

# The new secret is kept in the session just long enough to show it once after the redirect.
_NEW_SECRET = "tierlab_new_api_key_secret"  # noqa: S105 (a session key name, not a secret)


@login_required
def keys(request: HttpRequest) -> HttpResponse:
    team = team_for_user(user=request.user)
    can_grant_manage = services.api_key_can_grant_manage(user=request.user, team=team)
    form = ApiKeyCreateForm(request.POST or None, can_grant_manage=can_grant_manage)
    if request.method == "POST" and form.is_valid():
        key, secret = services.api_key_create(
            team=team,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_at"],
            scopes=form.cleaned_data["scopes"] or None,  # none ticked: the default, model + read
            created_by=request.user,
        )
        request.session[_NEW_SECRET] = {"id": key.pk, "secret": secret}
        return redirect("keys")
    new_secret = request.session.pop(_NEW_SECRET, None)
    return render(
        request,
        "accounts/keys.html",
        {"team": team, "form": form, "keys": api_key_list(team=team), "new_secret": new_secret},
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    team = team_for_user(user=request.user)
    key = get_object_or_404(api_key_list(team=team), pk=key_id)  # another team's key: 404
    services.api_key_revoke(key=key)
    messages.success(request, f"Revoked “{key.name}”. Requests with it are refused within seconds.")
    return redirect("keys")
