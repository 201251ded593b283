"""The Stripe webhook inbox: POST /stripe/webhook/ verifies and stores once, a Celery task processes.

Events are signed here the way Stripe (and localstripe) sign them; the last tests let a real
localstripe deliver real events to a live server."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import payments, stripe_gateway, webhooks
from billing.models import StripeEvent
from billing.tasks import stripe_event_process_task
from config.celery import app as celery_app
from tests.stripe_fixtures import free_loopback_port, localstripe_request, start_localstripe, stop_process

WEBHOOK_URL = "/stripe/webhook/"
DELIVERY_TIMEOUT_SECONDS = 15


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header: ``t=<unix time>,v1=<HMAC-SHA256 of "t.payload">``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def payment_intent_event(
    event_id: str = "evt_1",
    type_: str = "payment_intent.succeeded",
    *,
    intent_id: str = "pi_1",
    status: str = "succeeded",
    error: dict | None = None,
) -> dict:
    return {
        "id": event_id,
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "api_version": "2017-08-15",
        "livemode": False,
        "data": {
            "object": {
                "id": intent_id,
                "object": "payment_intent",
                "status": status,
                "amount": 2_000,
                "currency": "usd",
                "customer": "cus_1",
                "metadata": {"invoice_id": "41", "attempt": "1"},
                "last_payment_error": error,
            }
        },
    }


def deliver(client, event: dict, *, secret: str, signature: str | None = None):
    payload = json.dumps(event).encode()
    return client.post(
        WEBHOOK_URL,
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature if signature is not None else sign(payload, secret),
    )


@pytest.fixture
def celery_eager(monkeypatch):
    """Tasks queued by the code under test run in this process, at once."""
    monkeypatch.setattr(celery_app.conf, "task_always_eager", True)


@pytest.fixture
def outcomes(monkeypatch) -> list[stripe_gateway.PaymentIntentResult]:
    """payments.payment_outcome_record replaced by a recorder (the engine has its own tests)."""
    recorded: list[stripe_gateway.PaymentIntentResult] = []

    def record(*, intent, now=None):
        recorded.append(intent)

    monkeypatch.setattr(payments, "payment_outcome_record", record)
    return recorded


@pytest.fixture
def secret(settings) -> str:
    return settings.STRIPE_WEBHOOK_SECRET


def billing_engine_implemented() -> bool:
    probe = stripe_gateway.PaymentIntentResult(id="pi_probe", status="succeeded", amount_cents=1, currency="usd")
    try:
        payments.payment_outcome_record(intent=probe)
    except NotImplementedError:
        return False
    except Exception:  # implemented, and unhappy with a probe that matches nothing: fine
        return True
    return True


# --- Receiving ---------------------------------------------------------------------------------------


def test_url_is_the_public_one():
    assert reverse("stripe-webhook") == WEBHOOK_URL


@pytest.mark.django_db
def test_signed_event_is_stored_and_processed(
    client, secret, outcomes, celery_eager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = deliver(client, payment_intent_event(), secret=secret)

    assert response.status_code == 200
    assert response.json() == {"received": True, "id": "evt_1"}
    assert len(callbacks) == 1
    event = StripeEvent.objects.get()
    assert (event.event_id, event.type) == ("evt_1", "payment_intent.succeeded")
    assert event.payload["data"]["object"]["id"] == "pi_1"
    assert event.processed_at is not None
    assert event.processing_error == ""
    assert outcomes == [
        stripe_gateway.PaymentIntentResult(
            id="pi_1",
            status="succeeded",
            amount_cents=2_000,
            currency="usd",
            metadata={"invoice_id": "41", "attempt": "1"},
        )
    ]


@pytest.mark.django_db
def test_failed_payment_event_carries_the_failure(
    client, secret, outcomes, celery_eager, django_capture_on_commit_callbacks
):
    event = payment_intent_event(
        type_="payment_intent.payment_failed",
        status="requires_payment_method",
        error={"code": "card_declined", "message": "Your card was declined.", "charge": "ch_1"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event, secret=secret).status_code == 200

    [intent] = outcomes
    assert (intent.status, intent.failure_code, intent.failure_message) == (
        "requires_payment_method",
        "card_declined",
        "Your card was declined.",
    )
    assert not intent.succeeded


@pytest.mark.django_db
@pytest.mark.parametrize(
    "signature",
    ["", "t=1,v1=deadbeef", "garbage", None],
    ids=["missing", "forged", "garbage", "wrong-secret"],
)
def test_bad_signature_is_refused_and_nothing_stored(client, signature, outcomes, django_capture_on_commit_callbacks):
    event = payment_intent_event()
    if signature is None:
        signature = sign(json.dumps(event).encode(), "whsec_someone_else")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = deliver(client, event, secret="unused", signature=signature)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert StripeEvent.objects.count() == 0
    assert callbacks == []
    assert outcomes == []


@pytest.mark.django_db
def test_only_post(client):
    assert client.get(WEBHOOK_URL).status_code == 405


@pytest.mark.django_db
def test_same_event_twice_is_stored_once_and_processed_once(
    client, secret, outcomes, celery_eager, django_capture_on_commit_callbacks
):
    event = payment_intent_event()
    with django_capture_on_commit_callbacks(execute=True):
        first = deliver(client, event, secret=secret)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        second = deliver(client, event, secret=secret)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["id"] == "evt_1"
    assert StripeEvent.objects.count() == 1
    assert callbacks == []  # already processed: nothing queued again
    assert len(outcomes) == 1


@pytest.mark.django_db
def test_redelivery_of_an_unprocessed_event_queues_it_again(client, secret, django_capture_on_commit_callbacks):
    event = payment_intent_event()
    with django_capture_on_commit_callbacks() as first:  # queued, never run (a lost task)
        deliver(client, event, secret=secret)
    with django_capture_on_commit_callbacks() as second:
        deliver(client, event, secret=secret)
    assert (len(first), len(second), StripeEvent.objects.count()) == (1, 1, 1)


@pytest.mark.django_db
def test_broker_down_does_not_fail_the_delivery(client, secret, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(stripe_event_process_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = deliver(client, payment_intent_event(), secret=secret)
    assert response.status_code == 200
    event = StripeEvent.objects.get()
    assert event.processed_at is None  # stored; the sweeper will process it


# --- Processing --------------------------------------------------------------------------------------


def _stored(event: dict) -> StripeEvent:
    return StripeEvent.objects.create(event_id=event["id"], type=event["type"], payload=event)


@pytest.mark.django_db
@pytest.mark.parametrize("type_", ["customer.created", "charge.refunded", "invoice.paid"])
def test_other_event_types_are_stored_and_marked_processed(type_, outcomes):
    stored = _stored(payment_intent_event(type_=type_))
    webhooks.stripe_event_process(event_id=stored.pk)
    stored.refresh_from_db()
    assert stored.processed_at is not None
    assert outcomes == []


@pytest.mark.django_db
def test_processing_twice_applies_once(outcomes):
    stored = _stored(payment_intent_event())
    webhooks.stripe_event_process(event_id=stored.pk)
    webhooks.stripe_event_process(event_id=stored.pk)
    assert len(outcomes) == 1


@pytest.mark.django_db
def test_events_in_any_order_each_reach_billing(outcomes):
    # A failure reported after the success of a later attempt: both are handed over, in arrival order;
    # payments.payment_outcome_record's contract makes the order irrelevant.
    succeeded = _stored(payment_intent_event("evt_2", intent_id="pi_2"))
    failed = _stored(
        payment_intent_event(
            "evt_1", "payment_intent.payment_failed", intent_id="pi_1", status="requires_payment_method"
        )
    )
    webhooks.stripe_event_process(event_id=succeeded.pk)
    webhooks.stripe_event_process(event_id=failed.pk)
    assert [(o.id, o.status) for o in outcomes] == [("pi_2", "succeeded"), ("pi_1", "requires_payment_method")]


@pytest.mark.django_db
def test_processing_error_is_recorded_and_raised_then_cleared(monkeypatch):
    stored = _stored(payment_intent_event())

    def broken(*, intent, now=None):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(payments, "payment_outcome_record", broken)
    with pytest.raises(RuntimeError):
        webhooks.stripe_event_process(event_id=stored.pk)
    stored.refresh_from_db()
    assert stored.processed_at is None
    assert stored.processing_error == "RuntimeError: database is locked"

    monkeypatch.setattr(payments, "payment_outcome_record", lambda *, intent, now=None: None)
    webhooks.stripe_event_process(event_id=stored.pk)
    stored.refresh_from_db()
    assert stored.processed_at is not None
    assert stored.processing_error == ""


@pytest.mark.django_db
def test_processing_a_missing_row_is_a_no_op(outcomes):
    webhooks.stripe_event_process(event_id=999_999)
    assert outcomes == []


@pytest.mark.django_db
def test_sweeper_processes_events_left_unprocessed(outcomes):
    old = _stored(payment_intent_event("evt_old", intent_id="pi_old"))
    StripeEvent.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(minutes=10))
    recent = _stored(payment_intent_event("evt_recent", intent_id="pi_recent"))  # its task may still be coming

    assert webhooks.stripe_events_pending_process() == 1
    old.refresh_from_db()
    recent.refresh_from_db()
    assert old.processed_at is not None
    assert recent.processed_at is None
    assert [o.id for o in outcomes] == ["pi_old"]


@pytest.mark.django_db
def test_task_is_registered_and_processes_by_primary_key(outcomes):
    assert "billing.tasks.stripe_event_process_task" in celery_app.tasks  # autodiscovered from billing/tasks.py
    assert "billing.tasks.stripe_events_pending_process_task" in celery_app.tasks
    assert stripe_event_process_task.acks_late
    stored = _stored(payment_intent_event())
    stripe_event_process_task.apply(args=[stored.pk]).get()
    stored.refresh_from_db()
    assert stored.processed_at is not None
    assert len(outcomes) == 1


# --- With the real billing engine ---------------------------------------------------------------------


@pytest.mark.django_db
def test_webhook_settles_a_pending_payment_through_the_billing_engine(
    client, secret, catalog, celery_eager, django_capture_on_commit_callbacks
):
    """The contract end to end: a payment left pending (crash after the charge) is settled by the
    payment_intent.succeeded webhook: payment succeeded, invoice paid."""
    from billing.models import Invoice, Payment
    from tests.factories import PaymentFactory
    from tiers.services import user_create

    if not billing_engine_implemented():
        pytest.xfail("payments.payment_outcome_record is still the interface stub (NotImplementedError)")

    user = user_create(email="payer@example.com", tier_slug="pro")
    subscription = user.memberships.get().team.subscriptions.get()
    # A checkout's first-period invoice and its first attempt, as the engine records them before Stripe.
    payment = PaymentFactory(
        invoice__subscription=subscription,
        invoice__kind=Invoice.Kind.INITIAL,
        invoice__issued_at=timezone.now(),
        stripe_payment_intent_id="pi_settled_by_webhook",
    )
    invoice = payment.invoice
    event = payment_intent_event(intent_id="pi_settled_by_webhook")
    event["data"]["object"]["metadata"] = {"invoice_id": str(invoice.pk), "payment_id": str(payment.pk), "attempt": "1"}

    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event, secret=secret).status_code == 200

    stored = StripeEvent.objects.get()
    assert stored.processing_error == ""
    assert stored.processed_at is not None
    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert invoice.status == Invoice.Status.PAID


# --- Real deliveries from localstripe -----------------------------------------------------------------


def _wait_for(predicate, timeout: float = DELIVERY_TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def _stored_event_for(type_: str, object_id: str) -> StripeEvent | None:
    for event in StripeEvent.objects.filter(type=type_):
        if event.payload["data"]["object"].get("id") == object_id:
            return event
    return None


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_a_real_payment_event_end_to_end(
    live_server, stripe_local, stripe_webhooks_to, celery_eager
):
    stripe_webhooks_to(live_server.url)
    customer = stripe_gateway.customer_create(email="e2e@example.com", team_id=1, idempotency_key="e2e")
    card = stripe_gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_visa")
    charge = stripe_gateway.payment_intent_create(
        customer_id=customer,
        payment_method_id=card.payment_method_id,
        amount_cents=2_000,
        currency="usd",
        metadata={"invoice_id": "77", "attempt": "1"},
        idempotency_key="invoice:77:attempt:1",
    )
    assert charge.succeeded

    # localstripe posts about 1 s after the charge; the view verifies it with the shared secret.
    event = _wait_for(lambda: _stored_event_for("payment_intent.succeeded", charge.id))
    assert event is not None, "payment_intent.succeeded never arrived"
    assert event.event_id.startswith("evt_")
    assert event.payload["data"]["object"]["metadata"] == {"invoice_id": "77", "attempt": "1"}
    # Processed in the live server's thread (eager Celery) by the billing engine. While the engine is
    # still the interface stub, processing fails with NotImplementedError, recorded on the row.
    settled = _wait_for(
        lambda: StripeEvent.objects.filter(pk=event.pk).exclude(processed_at__isnull=True, processing_error="").first()
    )
    assert settled is not None, "the event was neither processed nor failed"
    if billing_engine_implemented():
        assert settled.processing_error == ""
        assert settled.processed_at is not None
    else:
        assert settled.processed_at is None
        assert settled.processing_error.startswith("NotImplementedError")


@pytest.mark.django_db(transaction=True)
def test_localstripe_command_registers_the_webhook_at_start(live_server, tmp_path, celery_eager):
    port = free_loopback_port()
    process = start_localstripe(
        port=port, log_path=tmp_path / "localstripe.log", extra_args=["--webhook-url", live_server.url + WEBHOOK_URL]
    )
    try:
        created = json.loads(
            localstripe_request(f"http://127.0.0.1:{port}", "POST", "/v1/customers", {"email": "hook@example.com"})
        )
        event = _wait_for(lambda: _stored_event_for("customer.created", created["id"]))
    finally:
        stop_process(process)
    assert event is not None, (tmp_path / "localstripe.log").read_text()
    event.refresh_from_db()
    assert event.processed_at is not None  # not a payment event: stored and marked processed
