"""Reads of partners and licences that the model API's request path asks for (through
usage.extensions, registered in PartnersConfig.ready)."""

from __future__ import annotations

from datetime import date

from django.db.models import F, OuterRef, Subquery

from core.compiled_query import CompiledFirst
from partners.models import LicenseAgreement, PartnerChannelKey

# Both are read on the model API's request path whenever usage/metering.py's per-process caches miss
# (most requests, with thousands of active teams): compiled once per process (core/compiled_query.py).
_channel_query = CompiledFirst(
    lambda api_key_id: PartnerChannelKey.objects.filter(api_key_id=api_key_id).values_list("partner_id"),
    arity=1,
    ints=1,
)


def _license_gate(team_id):
    return LicenseAgreement.objects.filter(team_id=team_id).exclude(status=LicenseAgreement.Status.GRANTED)


_license_query = CompiledFirst(lambda team_id: _license_gate(team_id).values_list("required_from"), arity=1, ints=1)


def caller_columns() -> dict:
    """Both answers below as expressions over ``accounts.ApiKey``, for the model API's one statement
    that reads a key with its team's subscription on a cache miss (usage.extensions, usage.callers)."""
    return {
        "channel_partner_id": F("partner_channel__partner_id"),
        "license_required_from": Subquery(
            _license_gate(OuterRef("team_id")).order_by("pk").values("required_from")[:1]
        ),
    }


def channel_partner_for_key(*, api_key_id: int) -> int | None:
    """The hosting partner whose channel the key was issued for, if any: the team's traffic through
    it is attributed to that partner (usage records, rollups, statements' direct lines)."""
    row = _channel_query.first(api_key_id)
    return row[0] if row else None


def license_required_from(*, team_id: int) -> date | None:
    """The first model release date the team needs a licence for, unless its licence is granted.
    The model API refuses the team's requests to models released on or after it (usage/metering.py
    asks through usage.extensions)."""
    row = _license_query.first(team_id)
    return row[0] if row else None
