from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from billing.models import Invoice

if TYPE_CHECKING:
    from accounts.models import Team


def invoice_list_for_team(*, team: Team) -> QuerySet[Invoice]:
    """The team's issued invoices, newest first. Scoped to the team, so another team's invoice number
    is simply not found; drafts have no number yet and are left out."""
    return Invoice.objects.filter(team=team, number__isnull=False).order_by("-issued_at", "-id")
