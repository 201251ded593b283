from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, time, timedelta

from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import team_for_request
from usage.selectors import usage_series

MAX_RANGE = {"day": timedelta(days=400), "hour": timedelta(days=31)}
CSV_COLUMNS = ["period", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens"]


# The instants a usage query may name: well inside datetime's range, so offsets and the default
# 30-day window cannot overflow it (year 1 at +14:00 is before datetime.min in UTC).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _instant(value: str, *, param: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (UTC if it has no offset), from 1970 to 9000 UTC."""
    invalid = serializers.ValidationError({param: [f"'{value}' is not an ISO date or datetime."]})
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            day = parse_date(value)
            if day is None:
                raise invalid
            parsed = datetime.combine(day, time.min)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        in_utc = parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # well-formed but not a date (2026-02-30), or out of range
        raise invalid from exc
    if not EARLIEST <= in_utc <= LATEST:
        window = f"{EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}"
        raise serializers.ValidationError({param: [f"'{value}' is outside {window}."]})
    return parsed


class UsageQuerySerializer(serializers.Serializer):
    # Blank is the same as absent (DRF's rule for query strings): the default applies.
    start = serializers.CharField(
        required=False, allow_blank=True, help_text="ISO date or datetime; default: 30 days ago."
    )
    end = serializers.CharField(
        required=False, allow_blank=True, help_text="ISO date or datetime, exclusive; default: now."
    )
    format = serializers.ChoiceField(
        choices=["json", "csv"], required=False, allow_blank=True, help_text="csv for a download"
    )
    granularity = serializers.ChoiceField(choices=["day", "hour"], default="day", allow_blank=True)
    model = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Only this model; default: every model."
    )

    def validate(self, attrs):
        attrs["granularity"] = attrs.get("granularity") or "day"
        now = timezone.now()
        end = _instant(attrs["end"], param="end") if attrs.get("end") else now
        start = _instant(attrs["start"], param="start") if attrs.get("start") else end - timedelta(days=30)
        if start >= end:
            raise serializers.ValidationError({"start": ["'start' must be before 'end'."]})
        if end - start > MAX_RANGE[attrs["granularity"]]:
            days = MAX_RANGE[attrs["granularity"]].days
            raise serializers.ValidationError(
                {"start": [f"At most {days} days at {attrs['granularity']} granularity."]}
            )
        return {"start": start, "end": end, "granularity": attrs["granularity"], "model": attrs.get("model") or None}


class UsageRowSerializer(serializers.Serializer):
    period = serializers.DateTimeField()
    model = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class UsageSeriesSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    granularity = serializers.ChoiceField(choices=["day", "hour"])
    model = serializers.CharField(allow_null=True)
    data = UsageRowSerializer(many=True)


class UsageApi(APIView):
    """Your team's requests and tokens per period (UTC hour or day) and model, for every period that
    overlaps [start, end), oldest first; current to the last request. `?format=csv` downloads the same
    rows (a header row, then one row per period and model)."""

    @extend_schema(
        parameters=[
            UsageQuerySerializer,
        ],
        responses={
            (200, "application/json"): UsageSeriesSerializer,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="With ?format=csv."),
        },
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        rows = usage_series(team_id=team_for_request(request).pk, **params)
        if request.query_params.get("format") == "csv":
            return self._csv(rows, params)
        return Response(
            {
                "start": params["start"],
                "end": params["end"],
                "granularity": params["granularity"],
                "model": params["model"],
                "data": rows,
            }
        )

    def _csv(self, rows: list[dict], params: dict) -> HttpResponse:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "period": row["period"].isoformat()})
        name = f"usage-{params['start']:%Y%m%d}-{params['end']:%Y%m%d}-{params['granularity']}.csv"
        return HttpResponse(
            buffer.getvalue(),
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
