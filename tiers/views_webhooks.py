"""POST /stripe/webhook/: Stripe's (or localstripe's) event deliveries. Thin: verify + store, 200."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tiers import webhooks
from tiers.stripe_gateway import WebhookSignatureInvalid


@csrf_exempt  # Stripe cannot send a CSRF token; the signature is the authentication
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = webhooks.stripe_event_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature", "")
        )
    except WebhookSignatureInvalid as exc:
        error = {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}
        return JsonResponse({"error": error}, status=400)
    return JsonResponse({"received": True, "id": event.event_id})
