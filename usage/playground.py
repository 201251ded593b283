"""The playground (/playground/, DESIGN.md "The public interface"): a signed-in person chats with the
models of their current team's tier, in conversations kept per person and team.

Every message is metered on the model API's own path, not a copy of it: ``metering.caller_for_team``
(the team's entitlements, refused as ``subscription_inactive`` like the team's keys) ->
``metering.admit`` (the model check and one atomic reservation of prompt + maximum completion against
every limit, refused with the API's codes and messages) -> the simulated answer streamed ->
``metering.settle`` (one UsageRecord, exactly once). The record has no key and a request id starting
``usage.models.PLAYGROUND_REQUEST_ID_PREFIX``: that is how the playground's usage is told apart from the
API's. A refused message changes nothing: no conversation, no message, no usage.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from core.errors import ApplicationError
from tiers.selectors import entitlements_for_team, language_model_list_active
from usage import errors, metering
from usage.models import PLAYGROUND_REQUEST_ID_PREFIX, Conversation, ConversationMessage
from usage.quotas.base import LimitName
from usage.simulator import MAX_COMPLETION_TOKENS, Completion, complete, iter_chunks

if TYPE_CHECKING:
    from accounts.models import Team, User

MAX_MESSAGE_CHARS = 20_000
MAX_SYSTEM_PROMPT_CHARS = 20_000
MAX_TOKENS_CEILING = 4_096  # the playground's max-tokens field; the simulated model writes at most 512
TITLE_MAX_CHARS = 120
_TITLE_FROM_MESSAGE_CHARS = 60

LIMIT_LABELS = {
    LimitName.REQUESTS_PER_MINUTE: "Messages this minute",
    LimitName.TOKENS_PER_MINUTE: "Tokens this minute",
    LimitName.REQUESTS_PER_DAY: "Messages today",
    LimitName.MONTHLY_TOKENS: "Tokens this period",
}


class InvalidTitle(ApplicationError):
    code = "invalid_title"


@dataclass(frozen=True)
class ChatInput:
    """One message sent from the page, with the settings it is sent with."""

    message: str
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    conversation_id: int | None = None


def chat_input_parse(body: Any) -> ChatInput:
    """The page's JSON body, checked; a 400 (``invalid_request``) naming the field otherwise."""
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"message", "model", "system_prompt", "temperature", "max_tokens", "conversation"})
    if unknown:
        raise errors.InvalidRequest(f"Unknown field '{unknown[0]}'.", param=unknown[0])
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        raise errors.InvalidRequest("Write a message first.", param="message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise errors.InvalidRequest(f"A message has at most {MAX_MESSAGE_CHARS:,} characters.", param="message")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest("Choose a model.", param="model")
    system_prompt = body.get("system_prompt") or ""
    if not isinstance(system_prompt, str) or len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise errors.InvalidRequest(
            f"The system prompt is text of at most {MAX_SYSTEM_PROMPT_CHARS:,} characters.", param="system_prompt"
        )
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise errors.InvalidRequest("The temperature is a number from 0 to 2.", param="temperature")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_CEILING
    ):
        raise errors.InvalidRequest(
            f"Max tokens is a whole number from 1 to {MAX_TOKENS_CEILING:,} (empty: the model's maximum).",
            param="max_tokens",
        )
    conversation = body.get("conversation")
    if conversation is not None and (isinstance(conversation, bool) or not isinstance(conversation, int)):
        raise errors.InvalidRequest("'conversation' is the id of one of your conversations.", param="conversation")
    return ChatInput(
        message=message,
        model=model,
        system_prompt=system_prompt.strip(),
        temperature=None if temperature is None else float(temperature),
        max_tokens=max_tokens,
        conversation_id=conversation,
    )


# --- Reads -----------------------------------------------------------------------------------------------


def playground_models(*, team_id: int) -> list[str]:
    """The models the team's tier includes, in catalog order (release date), for the model menu."""
    entitlements = entitlements_for_team(team_id=team_id)
    if entitlements is None:
        return []
    return [
        model_id
        for model_id in language_model_list_active().values_list("model_id", flat=True)
        if model_id in entitlements.allowed_models
    ]


def conversation_list(*, team: Team, user: User) -> QuerySet[Conversation]:
    """``user``'s conversations in ``team``, most recent first."""
    return Conversation.objects.filter(team=team, user=user)


def conversation_get(*, team: Team, user: User, conversation_id: int) -> Conversation:
    """One of ``user``'s conversations in ``team``; Http404 for anyone else's, or another team's."""
    return get_object_or_404(conversation_list(team=team, user=user), pk=conversation_id)


def conversation_messages(*, conversation: Conversation) -> list[dict[str, str]]:
    """The conversation's turns as chat messages (role, content), oldest first."""
    return [
        {"role": role, "content": content}
        for role, content in conversation.messages.order_by("id").values_list("role", "content")
    ]


# --- Writes ----------------------------------------------------------------------------------------------


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = (title or "").strip()
    if not title or len(title) > TITLE_MAX_CHARS:
        raise InvalidTitle(f"A title has 1 to {TITLE_MAX_CHARS} characters.", extra={"field": "title"})
    conversation.title = title
    conversation.save(update_fields=["title"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation and its messages. Its usage records stay: they are the team's bill."""
    conversation.delete()


@dataclass(frozen=True)
class Turn:
    """An admitted message: its conversation (saved, with the person's message), the answer to stream
    and the admission to settle."""

    conversation: Conversation
    completion: Completion
    admission: metering.Admission
    reserved_tokens: int
    request_id: str


def playground_turn_start(*, team: Team, user: User, chat: ChatInput, now: datetime | None = None) -> Turn:
    """Admit ``chat`` on the team's limits and keep the person's message; the answer is then streamed
    by ``playground_turn_events``. Raises the model API's errors (usage.errors) when refused, having
    changed nothing."""
    now = now or timezone.now()
    conversation = (
        conversation_get(team=team, user=user, conversation_id=chat.conversation_id)
        if chat.conversation_id is not None
        else None
    )
    caller = metering.caller_for_team(team_id=team.pk, now=now)
    history = conversation_messages(conversation=conversation) if conversation is not None else []
    system = [{"role": "system", "content": chat.system_prompt}] if chat.system_prompt else []
    messages = [*system, *history, {"role": "user", "content": chat.message}]
    # As the model API does: the deterministic answer first (cheap), then a reservation of the prompt
    # and the most the model can write, settled to what was sent.
    completion = complete(model=chat.model, messages=messages, max_tokens=chat.max_tokens, temperature=chat.temperature)
    reserve = completion.prompt_tokens + min(chat.max_tokens or MAX_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS)
    request_id = f"{PLAYGROUND_REQUEST_ID_PREFIX}{uuid.uuid4().hex}"
    admission = metering.admit(
        caller=caller, model=chat.model, request_id=request_id, tokens=reserve, now=now, request_id_is_new=True
    )
    # Admitted: from here the reservation is settled by the stream (or, if this process dies, refunded
    # by the reservation sweeper).
    with transaction.atomic():
        if conversation is None:
            conversation = Conversation(team=team, user=user, title=_title_from(chat.message), created_at=now)
        conversation.model = chat.model
        conversation.system_prompt = chat.system_prompt
        conversation.temperature = chat.temperature
        conversation.max_tokens = chat.max_tokens
        conversation.updated_at = now
        conversation.save()
        ConversationMessage.objects.create(
            conversation=conversation, role=ConversationMessage.Role.USER, content=chat.message, created_at=now
        )
    return Turn(
        conversation=conversation,
        completion=completion,
        admission=admission,
        reserved_tokens=reserve,
        request_id=request_id,
    )


def _title_from(message: str) -> str:
    words = " ".join(message.split())
    return words if len(words) <= _TITLE_FROM_MESSAGE_CHARS else words[: _TITLE_FROM_MESSAGE_CHARS - 1] + "…"


def limits_after(*, admission: metering.Admission, tokens_delta: int, now: datetime) -> list[dict[str, Any]]:
    """What is left of each of the team's limits after this message (unlimited ones left out)."""
    used = metering.used_after(admission=admission, tokens_delta=tokens_delta)
    found = []
    for limit in admission.limits:
        if limit.capacity is None:
            continue
        count = used.get(limit.name, 0)
        found.append(
            {
                "name": limit.name.value,
                "label": LIMIT_LABELS[limit.name],
                "limit": limit.capacity,
                "used": count,
                "remaining": max(0, limit.capacity - count),
                "resets_in_seconds": limit.seconds_until_reset(now),
                # False for the included tokens of a tier that bills overage: past them it is billed.
                "enforced": limit.enforced,
            }
        )
    return found


def _answer_save(turn: Turn, *, text: str, completion_tokens: int, now: datetime) -> None:
    completion = turn.completion
    ConversationMessage.objects.create(
        conversation=turn.conversation,
        role=ConversationMessage.Role.ASSISTANT,
        content=text,
        request_id=turn.request_id,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion_tokens,
        stop_reason=completion.stop_reason if completion_tokens == completion.completion_tokens else "cut",
        created_at=now,
    )
    Conversation.objects.filter(pk=turn.conversation.pk).update(updated_at=now)


def playground_turn_events(turn: Turn, *, delay_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
    """The answer as events: ``start`` (the conversation), ``delta`` (pieces of four tokens, ``delay_seconds``
    apart), then ``done`` (tokens used, what is left of each limit) once recorded, or ``error`` when the
    usage could not be recorded (the answer is then not counted, as the API's stream ends). Closed early
    (the person left), it settles what was sent and keeps that much of the answer."""
    completion = turn.completion
    pieces = list(iter_chunks(completion))
    state = {"sent": 0, "settled": False}

    def finish(completion_tokens: int, text: str) -> bool:
        state["settled"] = True
        now = timezone.now()
        recorded = metering.settle(
            admission=turn.admission,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion_tokens,
            now=now,
        )
        if recorded:
            with transaction.atomic():
                _answer_save(turn, text=text, completion_tokens=completion_tokens, now=now)
        return recorded

    try:
        yield {
            "type": "start",
            "conversation": {"id": turn.conversation.pk, "title": turn.conversation.title},
            "request_id": turn.request_id,
            "model": turn.admission.model,
        }
        for piece in pieces:
            if delay_seconds:
                time.sleep(delay_seconds)
            yield {"type": "delta", "text": piece}
            state["sent"] += 1
        if not finish(completion.completion_tokens, completion.text):
            error = errors.QuotaBackendUnavailable(
                "The usage of this message could not be recorded, so its answer is incomplete and not counted. "
                f"Retry in {metering.QUOTA_UNAVAILABLE_RETRY_AFTER_SECONDS} s."
            )
            yield {"type": "error", **error.body()}
            return
        now = timezone.now()
        delta = completion.prompt_tokens + completion.completion_tokens - turn.reserved_tokens
        yield {
            "type": "done",
            "stop_reason": completion.stop_reason,
            "usage": {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": completion.total_tokens,
            },
            "limits": limits_after(admission=turn.admission, tokens_delta=delta, now=now),
        }
    finally:
        if not state["settled"]:
            sent = state["sent"]
            finish(completion.completion_tokens * sent // max(1, len(pieces)), "".join(pieces[:sent]))
