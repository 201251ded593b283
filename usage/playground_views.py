"""The playground's pages and its chat endpoint (usage/playground.py has the rules).

The chat endpoint is same-origin and session-authenticated, so Django's CSRF check applies to it as to
any form (the page's script sends the token in ``X-CSRFToken``); it answers a refusal in the model
API's JSON error shape with the API's status and code, and an admitted message as a stream of JSON
lines (``application/x-ndjson``) that the page's script reads with fetch and a ReadableStream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.decorators import team_page
from accounts.roles import TeamAction, team_role_check
from accounts.selectors import team_for_request
from core.errors import ApplicationError, error_body
from core.json_input import JsonInputError, json_loads_bounded
from tiers.selectors import entitlements_for_team
from usage import errors, playground
from usage.simulator import MAX_COMPLETION_TOKENS


@team_page(TeamAction.VIEW)
def playground_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    team = request.team
    conversation = (
        playground.conversation_get(team=team, user=request.user, conversation_id=conversation_id)
        if conversation_id is not None
        else None
    )
    entitlements = entitlements_for_team(team_id=team.pk)
    models = playground.playground_models(team_id=team.pk)
    history = playground.conversation_messages(conversation=conversation) if conversation else []
    return render(
        request,
        "usage/playground.html",
        {
            "team": team,
            "conversations": playground.conversation_list(team=team, user=request.user),
            "conversation": conversation,
            "history": history,
            "models": models,
            "selected_model": conversation.model if conversation and conversation.model in models else "",
            "tier_slug": entitlements.tier_slug if entitlements else "",
            "includes_api_access": entitlements.includes_api_access if entitlements else True,
            "api_base": request.build_absolute_uri("/").rstrip("/"),
            "max_tokens_ceiling": playground.MAX_TOKENS_CEILING,
            "model_max_tokens": MAX_COMPLETION_TOKENS,
        },
    )


def _error(exc: ApplicationError) -> JsonResponse:
    headers = dict(getattr(exc, "headers", {}) or {})
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JsonResponse(exc.body(), status=exc.status, headers=headers)


@require_POST
def playground_chat(request: HttpRequest) -> HttpResponse:
    """One message: refused with the model API's status and error shape, or answered as a stream."""
    if not request.user.is_authenticated:
        body = error_body("Sign in to use the playground.", type_="authentication_error", code="not_authenticated")
        return JsonResponse(body, status=401)
    team = team_for_request(request)
    if team is None:
        return JsonResponse(error_body("You have no team.", type_="not_found_error", code="not_found"), status=404)
    try:
        team_role_check(team=team, actor=request.user, action=TeamAction.VIEW)
        try:
            body = json_loads_bounded(request.body)
        except JsonInputError as exc:
            raise errors.InvalidRequest(exc.message, param=exc.param) from exc
        chat = playground.chat_input_parse(body)
        turn = playground.playground_turn_start(team=team, user=request.user, chat=chat)
    except ApplicationError as exc:  # the model API's refusals (usage.errors), a role refusal, bad input
        return _error(exc)
    except Http404:
        body = error_body("No such conversation.", type_="not_found_error", code="not_found", param="conversation")
        return JsonResponse(body, status=404)

    events = playground.playground_turn_events(turn, delay_seconds=settings.TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS)

    def lines() -> Iterator[bytes]:
        try:
            for event in events:
                yield (json.dumps(event, separators=(",", ":")) + "\n").encode()
        finally:
            events.close()  # the person left mid-answer: settle what was sent

    response = StreamingHttpResponse(lines(), content_type="application/x-ndjson")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@team_page(TeamAction.VIEW)
@require_POST
def conversation_rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = playground.conversation_get(team=request.team, user=request.user, conversation_id=conversation_id)
    try:
        playground.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Renamed to “{conversation.title}”.")
    return redirect("playground-conversation", conversation_id=conversation.pk)


@team_page(TeamAction.VIEW)
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = playground.conversation_get(team=request.team, user=request.user, conversation_id=conversation_id)
    title = conversation.title
    playground.conversation_delete(conversation=conversation)
    messages.success(request, f"Deleted “{title}”. Its usage stays on your team's record.")
    return redirect("playground")
