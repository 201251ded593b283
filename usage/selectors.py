from __future__ import annotations

from datetime import UTC, date, datetime

from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncHour

from usage.models import Heartbeat, UsageRecord


def heartbeat_last(*, name: str = "beat") -> Heartbeat | None:
    return Heartbeat.objects.filter(name=name).first()


def usage_series(*, team_id: int, start: datetime, end: datetime, granularity: str) -> list[dict]:
    """Requests and tokens per (period, model) for ``team_id`` in [start, end), oldest first.

    ``granularity`` is "day" or "hour" (UTC). Periods without usage are left out.
    """
    trunc = {"day": TruncDay, "hour": TruncHour}[granularity]
    rows = (
        UsageRecord.objects.filter(team_id=team_id, created_at__gte=start, created_at__lt=end)
        .annotate(period=trunc("created_at", tzinfo=UTC))
        .values("period", "model")
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"),
        )
        .order_by("period", "model")
    )
    return list(rows)


def license_required_from(*, team_id: int) -> date | None:
    """The first model release date the team needs a licence for, unless its licence is granted.
    The model API refuses the team's requests to models released on or after it (usage/metering.py)."""
    from usage.models import LicenseAgreement

    row = (
        LicenseAgreement.objects.filter(team_id=team_id)
        .exclude(status=LicenseAgreement.Status.GRANTED)
        .values_list("required_from", flat=True)
        .first()
    )
    return row
