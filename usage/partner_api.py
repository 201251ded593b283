"""The hosting-partner usage-reporting API: ``POST /api/v1/partner/usage-events``.

A partner authenticates with its partner key (``Authorization: Bearer tlp-...``) and posts
``{"events": [...]}``, at most 1,000 events. The answer is 200 with
``{"accepted", "duplicates", "rejected", "errors": [{"index", "message"}]}`` whenever the body was a
batch at all, even if some (or all) events were rejected: the partner learns per event what to fix
and resends only those, and a resent batch is harmless (duplicates are counted, not stored). 207
Multi-Status was considered and not chosen: it is WebDAV's, clients treat it as an oddity, and the
counts already say everything. Errors of the request as a whole use the API's error shape
``{"error": {"message", "type", "code", "param"}}``: 401 for a missing/wrong/revoked key, 403 for a
deactivated partner, 400 for a body that is not JSON, has no "events" list or more than 1,000 events,
413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default: 1,000 events of the largest
allowed fields stay well below it).

A plain Django view, like the model API (usage/model_api.py): DRF's request wrapper and parsers add
nothing to one JSON body, and the endpoint is measured for throughput (bench/partner_ingest.py).
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from usage.partners import MAX_EVENTS_PER_BATCH, PartnerError, partner_key_authenticate, partner_usage_events_ingest

logger = logging.getLogger(__name__)


def _error(status: int, message: str, *, type_: str, code: str, param: str | None = None) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "type": type_, "code": code, "param": param}}, status=status)


@csrf_exempt  # partner keys, not cookies
def partner_usage_events(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _error(405, "Use POST for this endpoint.", type_="invalid_request_error", code="method_not_allowed")
    now = timezone.now()
    authorization = request.headers.get("Authorization", "")
    if not authorization.startswith("Bearer "):
        return _error(
            401,
            "Missing partner key: send 'Authorization: Bearer <your TierLab partner key>'.",
            type_="authentication_error",
            code="invalid_partner_key",
        )
    partner = partner_key_authenticate(raw_key=authorization[7:].strip(), now=now)
    if partner is None:
        return _error(
            401,
            "Invalid partner key: it is wrong or revoked.",
            type_="authentication_error",
            code="invalid_partner_key",
        )
    if not partner.is_active:
        return _error(403, "This partner account is deactivated.", type_="permission_error", code="partner_inactive")
    try:
        body = json.loads(request.body or b"null")
    except RequestDataTooBig:
        return _error(
            413,
            f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes; send smaller batches.",
            type_="invalid_request_error",
            code="request_too_large",
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"The request body is not valid JSON: {exc}.", type_="invalid_request_error", code="invalid")
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        return _error(
            400,
            'The body must be a JSON object {"events": [...]}.',
            type_="invalid_request_error",
            code="invalid",
            param="events",
        )
    if len(events) > MAX_EVENTS_PER_BATCH:
        return _error(
            400,
            f"At most {MAX_EVENTS_PER_BATCH} events per request; this one has {len(events)}.",
            type_="invalid_request_error",
            code="too_many_events",
            param="events",
        )
    try:
        result = partner_usage_events_ingest(partner_id=partner.partner_id, events=events, now=now)
    except PartnerError as exc:
        return _error(400, exc.message, type_="invalid_request_error", code=exc.code, param=exc.extra.get("field"))
    return JsonResponse(result.as_dict(), json_dumps_params={"separators": (",", ":")})
