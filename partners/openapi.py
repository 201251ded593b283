"""The partner usage ingest in the OpenAPI schema (/api/schema/). It is a plain Django view (for speed),
which drf-spectacular cannot read, so its operation is written out here and merged into the generated
schema by config.openapi; the MAU and licence endpoints are DRF views and documented by their
serializers.

Each event is validated on its own and a bad one is reported in the answer's ``errors`` (by index)
while the others are stored, so the schema leaves the items of ``events`` open: a malformed event is
not a malformed request.
"""

from __future__ import annotations

from typing import Any

from core.openapi import error_response
from partners.services import MAX_EVENT_COUNT, MAX_EVENTS_PER_BATCH

TAG = "Partner usage"
SECURITY = [{"PartnerKey": []}]

EVENT_EXAMPLE = {
    "event_id": "evt-2026-10-01-000001",
    "customer": "acme-corp",
    "model": "Llama-3.3-70B-Instruct",
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "amount_cents": 42,
    "currency": "usd",
    "time": "2026-10-01T12:00:00Z",
}

EVENT_DESCRIPTION = (
    "One usage event, a flat JSON object: `event_id` (1-100 characters, unique per partner: a repeat is"
    " counted as a duplicate, so batches can be retried), `customer` (≤ 200 characters), `model` (≤ 100),"
    f" `prompt_tokens`, `completion_tokens`, `amount_cents` (integers 0 to {MAX_EVENT_COUNT:,}), `currency`"
    " (3 letters), `time` (ISO 8601 with a timezone; not in the future, not before your first share rate"
    " minus TIERLAB_PARTNER_EVENT_MAX_LATENESS_DAYS). No NUL characters or unpaired surrogates."
)


_error = error_response


SCHEMAS: dict[str, Any] = {
    "PartnerUsageBatch": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "maxItems": MAX_EVENTS_PER_BATCH,
                "items": {"description": EVENT_DESCRIPTION},
                "example": [EVENT_EXAMPLE],
            }
        },
    },
    "PartnerUsageResult": {
        "type": "object",
        "required": ["accepted", "duplicates", "rejected", "errors"],
        "description": "accepted + duplicates + rejected = the number of events sent.",
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message"],
                    "properties": {"index": {"type": "integer", "minimum": 0}, "message": {"type": "string"}},
                },
            },
        },
    },
}


def openapi_fragment() -> dict[str, Any]:
    """{"paths", "components", "tags"} for POST /api/v1/partner/usage-events."""
    return {
        "paths": {
            "/api/v1/partner/usage-events": {
                "post": {
                    "operationId": "partner_usage_events_create",
                    "summary": "Report your customers' usage of the models",
                    "description": (
                        f"Up to {MAX_EVENTS_PER_BATCH:,} events per request (TIERLAB_PARTNER_MAX_BODY_BYTES, 8 MiB by"
                        " default). Valid events are stored even when others in the batch are refused."
                    ),
                    "tags": [TAG],
                    "security": SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PartnerUsageBatch"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "What happened to each event.",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/PartnerUsageResult"}}
                            },
                        },
                        "400": _error('The body is not `{"events": [...]}` or has too many events.'),
                        "401": _error("`invalid_partner_key`."),
                        "403": _error("`partner_inactive`: the partner account is deactivated."),
                        "405": _error("`method_not_allowed`: POST only."),
                        "413": _error("`request_too_large`: send smaller batches."),
                    },
                }
            }
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "PartnerKey": {"type": "http", "scheme": "bearer", "description": "A TierLab partner key: `tlp-...`"}
            },
        },
        "tags": [{"name": TAG, "description": "Hosting partners report the usage they bill; statements share it."}],
    }
