"""The partners app's APIs: hosting partners' usage reporting (a plain Django view, for speed:
/api/v1/partner/usage-events) and licensees' MAU reports and licence agreement (DRF)."""

from __future__ import annotations

import json
import logging
import re
from datetime import date

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import actor_for_request, team_for_request
from core.errors import error_body, error_type
from partners import licensing
from partners.models import LicenseAgreement, MonthlyActiveUsers
from partners.services import MAX_EVENTS_PER_BATCH, PartnerError, partner_key_authenticate, partner_usage_events_ingest

logger = logging.getLogger(__name__)


def _error(status: int, message: str, *, code: str, param: str | None = None) -> JsonResponse:
    return JsonResponse(error_body(message, type_=error_type(status), code=code, param=param), status=status)


@csrf_exempt  # partner keys, not cookies
def partner_usage_events(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = _error(405, "Use POST for this endpoint.", code="method_not_allowed")
        response["Allow"] = "POST"
        return response
    now = timezone.now()
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() != "bearer ":  # the scheme is case-insensitive (RFC 9110)
        return _error(
            401,
            "Missing partner key: send 'Authorization: Bearer <your TierLab partner key>'.",
            code="invalid_partner_key",
        )
    partner = partner_key_authenticate(raw_key=authorization[7:].strip(), now=now)
    if partner is None:
        return _error(401, "Invalid partner key: it is wrong or revoked.", code="invalid_partner_key")
    if not partner.is_active:
        return _error(403, "This partner account is deactivated.", code="partner_inactive")
    try:
        # read(), not .body: the body is already bounded by TIERLAB_PARTNER_MAX_BODY_BYTES (core.middleware),
        # and .body would apply Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which stays at its default for pages.
        body = json.loads(request.read() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"The request body is not valid JSON: {exc}.", code="invalid")
    except RecursionError:  # json.loads recurses once per nesting level; events are flat objects
        return _error(400, "The request body is nested too deeply; events are flat objects.", code="invalid")
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        return _error(
            400,
            'The body must be a JSON object {"events": [...]}.',
            code="invalid",
            param="events",
        )
    if len(events) > MAX_EVENTS_PER_BATCH:
        return _error(
            400,
            f"At most {MAX_EVENTS_PER_BATCH} events per request; this one has {len(events)}.",
            code="too_many_events",
            param="events",
        )
    try:
        result = partner_usage_events_ingest(partner_id=partner.partner_id, events=events, now=now)
    except PartnerError as exc:
        return JsonResponse(exc.body(), status=exc.status)
    return JsonResponse(result.as_dict(), json_dumps_params={"separators": (",", ":")})


MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")  # ASCII: \d matches any script's digits
# The months a report may name: none of TierLab's licensees reported before 2000, and four-digit years
# keep "YYYY-MM" round-tripping ("0017-05" was stored, then read back as "17-05").
MIN_MONTH_YEAR = 2000
MAX_MONTH_YEAR = 9999
# PositiveBigIntegerField's upper bound on PostgreSQL (bigint); SQLite's integer is the same width.
MAX_ACTIVE_USERS = 2**63 - 1


@extend_schema_field({"type": "string", "pattern": r"^[2-9][0-9]{3}-(0[1-9]|1[0-2])$", "example": "2026-10"})
class MonthField(serializers.Field):
    """A calendar month as "YYYY-MM" <-> the date of its first day."""

    default_error_messages = {"invalid": f"A month as YYYY-MM from {MIN_MONTH_YEAR} on, e.g. 2026-10."}

    def to_internal_value(self, data) -> date:
        match = MONTH_RE.match(data) if isinstance(data, str) else None
        if match is None:
            self.fail("invalid")
        year, month = int(match[1]), int(match[2])
        if not (1 <= month <= 12 and MIN_MONTH_YEAR <= year <= MAX_MONTH_YEAR):
            self.fail("invalid")
        return date(year, month, 1)

    def to_representation(self, value: date) -> str:
        # Not f"{value:%Y-%m}": strftime's %Y does not pad years below 1000 on every platform.
        return f"{value.year:04d}-{value.month:02d}"


class MauReportSerializer(serializers.ModelSerializer):
    month = MonthField(help_text='The calendar month, "YYYY-MM".')
    active_users = serializers.IntegerField(min_value=0, max_value=MAX_ACTIVE_USERS)

    class Meta:
        model = MonthlyActiveUsers
        fields = ["month", "active_users", "reported_at"]
        read_only_fields = ["reported_at"]
        validators: list = []  # the service keys on (team, month): a second report is a correction


class LicenseAgreementSerializer(serializers.ModelSerializer):
    mau_month = MonthField(read_only=True)
    monthly_fee_cents = serializers.IntegerField(read_only=True, help_text="Integer cents of `currency`.")

    class Meta:
        model = LicenseAgreement
        fields = [*licensing.AGREEMENT_FIELDS, "created_at"]
        read_only_fields = fields


class MauReportApi(generics.ListAPIView):
    """Your team's monthly-active-user reports, newest month first. POST reports a month; reporting a
    month again corrects it. Above the licence threshold, a model released in the following month needs
    a licence agreement, and so does every later one (see /api/v1/license)."""

    serializer_class = MauReportSerializer

    def get_queryset(self):
        return licensing.mau_report_list(team=team_for_request(self.request))

    @extend_schema(
        request=MauReportSerializer,
        responses={201: MauReportSerializer},
        examples=[OpenApiExample("October 2026", value={"month": "2026-10", "active_users": 812000000})],
    )
    def post(self, request):
        payload = MauReportSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        report = licensing.mau_report_record(
            team=team_for_request(request),
            month=payload.validated_data["month"],
            active_users=payload.validated_data["active_users"],
            now=timezone.now(),
            actor=actor_for_request(request),
        )
        return Response(MauReportSerializer(report).data, status=status.HTTP_201_CREATED)


NO_LICENSE = OpenApiResponse(description="`license_not_required`: your team has no licence agreement.")


class LicenseApi(APIView):
    """Your team's licence agreement (404 if none is required): status required / requested / granted /
    refused, the first release date it covers, the MAU figure that triggered it, and the fee terms."""

    @extend_schema(responses={200: LicenseAgreementSerializer, 404: NO_LICENSE})
    def get(self, request):
        agreement = licensing.license_agreement_for_team(team=team_for_request(request))
        if agreement is None:
            raise exceptions.NotFound(
                "Your team has no licence agreement: none is required.", code="license_not_required"
            )
        return Response(LicenseAgreementSerializer(agreement).data)


class LicenseRequestApi(APIView):
    """Ask for the required licence (status required -> requested); operators decide in the admin.
    Asking again while requested is harmless; a decided agreement answers 409."""

    @extend_schema(
        request=None,
        responses={
            200: LicenseAgreementSerializer,
            404: NO_LICENSE,
            409: OpenApiResponse(description="Already decided."),
        },
    )
    def post(self, request):
        agreement = licensing.license_request(
            team=team_for_request(request), now=timezone.now(), actor=actor_for_request(request)
        )
        return Response(LicenseAgreementSerializer(agreement).data)
