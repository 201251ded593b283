"""Reads of partners and licences that the model API's request path asks for (through
usage.extensions, registered in PartnersConfig.ready)."""

from __future__ import annotations

from datetime import date

from partners.models import LicenseAgreement, PartnerChannelKey


def channel_partner_for_key(*, api_key_id: int) -> int | None:
    """The hosting partner whose channel the key was issued for, if any: the team's traffic through
    it is attributed to that partner (usage records, rollups, statements' direct lines)."""
    return PartnerChannelKey.objects.filter(api_key_id=api_key_id).values_list("partner_id", flat=True).first()


def license_required_from(*, team_id: int) -> date | None:
    """The first model release date the team needs a licence for, unless its licence is granted.
    The model API refuses the team's requests to models released on or after it (usage/metering.py
    asks through usage.extensions)."""
    row = (
        LicenseAgreement.objects.filter(team_id=team_id)
        .exclude(status=LicenseAgreement.Status.GRANTED)
        .values_list("required_from", flat=True)
        .first()
    )
    return row
