"""Extension points of accounts for the apps above it (the pattern of usage.extensions).

accounts makes teams but cannot import tiers, which gives a new team its subscription; tiers registers
that step here from ``TiersConfig.ready()``. The default does nothing, so accounts works, and is
tested, on its own.

- ``team_set_up(team=...)``: called in the transaction that creates a team (accounts.services.team_create,
  team_create_personal), unless the caller sets the team up itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accounts.models import Team


def _nothing(*, team: Team) -> None:
    return None


team_set_up: Callable[..., None] = _nothing


def register(*, team_set_up: Callable[..., None] | None = None) -> None:
    """Install the higher apps' steps (called once per process, from ``AppConfig.ready``)."""
    if team_set_up is not None:
        globals()["team_set_up"] = team_set_up
