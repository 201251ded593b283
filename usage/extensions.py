"""Extension points of the model API's request path for the apps above usage.

usage sits below billing and partners (DESIGN.md, "Apps"), so it cannot import them; where the request
path needs an answer only a higher app has, that app registers a function here from its
``AppConfig.ready()`` (PartnersConfig does both below). Each default answers as if the higher app had
nothing to say, so usage works, and is tested, on its own. The answers are cached per process by the
caller (usage/metering.py), so a registered function may run a query.

- ``key_channel_partner(api_key_id=...) -> int | None``: the hosting partner whose channel the key
  was issued for (the request's usage is attributed to it), or None.
- ``license_required_from(team_id=...) -> date | None``: the first model release date the team needs a
  licence agreement for (requests to models released on or after it are refused), or None.
- ``caller_columns() -> dict[str, Expression]``: the same two answers as ORM expressions over
  ``accounts.ApiKey`` (``channel_partner_id`` and ``license_required_from``, either may be left out),
  so usage.callers reads them in the one statement that reads a key and its team's subscription when
  the caches miss. Whatever is left out is asked of the functions above.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any


def _no_partner(*, api_key_id: int) -> int | None:
    return None


def _no_licence_needed(*, team_id: int) -> date | None:
    return None


def _no_columns() -> dict[str, Any]:
    return {}


key_channel_partner: Callable[..., int | None] = _no_partner
license_required_from: Callable[..., date | None] = _no_licence_needed
caller_columns: Callable[[], dict[str, Any]] = _no_columns


def register(
    *,
    key_channel_partner: Callable[..., int | None] | None = None,
    license_required_from: Callable[..., date | None] | None = None,
    caller_columns: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Install the higher apps' answers (called once per process, from ``AppConfig.ready``)."""
    module = globals()
    if key_channel_partner is not None:
        module["key_channel_partner"] = key_channel_partner
    if license_required_from is not None:
        module["license_required_from"] = license_required_from
    if caller_columns is not None:
        module["caller_columns"] = caller_columns
