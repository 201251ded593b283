"""Extension points of accounts for the apps above it (the pattern of usage.extensions).

accounts makes teams but cannot import tiers, which gives a new team its subscription; tiers registers
that step here from ``TiersConfig.ready()``. The default does nothing, so accounts works, and is
tested, on its own.

- ``team_set_up(team=...)``: called in the transaction that creates a team (accounts.services.team_create,
  team_create_personal), unless the caller sets the team up itself.
- ``api_access_refusal(team=...) -> str``: why the team may not have API keys ("" when it may): tiers
  answers from the team's tier (``Tier.includes_api_access``; a playground-only consumer tier has
  none). Asked by accounts.services.api_key_create, so the keys page, the account API and the
  create_api_key command refuse alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accounts.models import Team


def _nothing(*, team: Team) -> None:
    return None


def _api_access_allowed(*, team: Team) -> str:
    return ""


team_set_up: Callable[..., None] = _nothing
api_access_refusal: Callable[..., str] = _api_access_allowed


def register(
    *, team_set_up: Callable[..., None] | None = None, api_access_refusal: Callable[..., str] | None = None
) -> None:
    """Install the higher apps' steps (called once per process, from ``AppConfig.ready``)."""
    if team_set_up is not None:
        globals()["team_set_up"] = team_set_up
    if api_access_refusal is not None:
        globals()["api_access_refusal"] = api_access_refusal
