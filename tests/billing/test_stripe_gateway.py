"""The Stripe gateway against a real localstripe process (tests/stripe_fixtures.py), plus the error
translation against a stub server, /healthz's Stripe entry and the `localstripe` command."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import re
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from billing import stripe_gateway as gateway
from tests.stripe_fixtures import free_loopback_port, localstripe_request, start_localstripe, stop_process

pytestmark = pytest.mark.django_db  # /healthz and the settings fixture; the gateway itself needs no DB


def _customer(base_url: str, customer_id: str) -> dict:
    return json.loads(localstripe_request(base_url, "GET", f"/v1/customers/{customer_id}"))


@pytest.fixture
def customer(stripe_local) -> str:
    return gateway.customer_create(email="ada@example.com", team_id=7, idempotency_key="team:7:customer")


@pytest.fixture
def visa(customer) -> gateway.CardDetails:
    return gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_visa")


def _charge(customer: str, payment_method_id: str, invoice: str = "41", **overrides) -> gateway.PaymentIntentResult:
    kwargs = {
        "customer_id": customer,
        "payment_method_id": payment_method_id,
        "amount_cents": 2_000,
        "currency": "usd",
        "metadata": {"invoice_id": invoice, "attempt": "1"},
        "idempotency_key": f"invoice:{invoice}:attempt:1",
        "description": "Pro, March",
    }
    kwargs.update(overrides)
    return gateway.payment_intent_create(**kwargs)


# --- The module's own rules ---------------------------------------------------------------------------


def test_api_version_is_the_one_the_pinned_sdk_was_generated_for():
    import stripe

    assert stripe.VERSION == "16.1.0"
    assert gateway.API_VERSION == stripe._api_version._ApiVersion.CURRENT


def test_no_other_module_imports_stripe():
    base = Path(django_settings.BASE_DIR)
    pattern = re.compile(r"^\s*(import stripe\b|from stripe\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(base))
        for app in ("accounts", "config", "tiers", "usage")
        for path in (base / app).rglob("*.py")
        if path.name != "stripe_gateway.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


# --- Customers and cards ------------------------------------------------------------------------------


def test_customer_create_keeps_the_team_in_metadata(stripe_local, customer):
    assert customer.startswith("cus_")
    stored = _customer(stripe_local, customer)
    assert stored["email"] == "ada@example.com"
    assert stored["metadata"] == {"team_id": "7"}


def test_attach_visa_returns_the_card_and_makes_it_the_default(stripe_local, customer, visa):
    assert visa.brand == "visa"
    assert visa.last4 == "4242"
    # The test id becomes a payment method of its own: that id is the one to store and charge.
    assert visa.payment_method_id.startswith("pm_")
    assert visa.payment_method_id != "pm_card_visa"
    assert _customer(stripe_local, customer)["invoice_settings"]["default_payment_method"] == visa.payment_method_id


def test_attach_declined_card_raises_payment_declined(customer):
    with pytest.raises(gateway.PaymentDeclined) as caught:
        gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_visa_chargeDeclined")
    assert caught.value.code == "card_declined"
    assert caught.value.extra["stripe_code"] == "card_declined"
    assert "decline_code" in caught.value.extra
    assert caught.value.status == 402


def test_attach_to_unknown_customer_is_an_invalid_request(stripe_local):
    with pytest.raises(gateway.PaymentInvalidRequest):
        gateway.payment_method_attach(customer_id="cus_doesnotexist", payment_method="pm_card_visa")


# --- Charges ------------------------------------------------------------------------------------------


def test_payment_intent_create_succeeds_with_visa(customer, visa):
    result = _charge(customer, visa.payment_method_id)
    assert result.id.startswith("pi_")
    assert result.succeeded
    assert (result.amount_cents, result.currency) == (2_000, "usd")
    assert result.metadata == {"invoice_id": "41", "attempt": "1", "description": "Pro, March"}
    assert (result.failure_code, result.failure_message) == ("", "")
    assert gateway.payment_intent_retrieve(payment_intent_id=result.id) == result


def test_failing_charge_comes_back_as_a_failed_result_with_its_id(customer):
    failing = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_chargeCustomerFail")
    result = _charge(customer, failing.payment_method_id)
    assert result.id.startswith("pi_")
    assert not result.succeeded
    assert result.status == "requires_payment_method"
    assert result.failure_code == "card_declined"
    assert result.failure_message
    assert result.metadata["invoice_id"] == "41"
    assert gateway.payment_intent_retrieve(payment_intent_id=result.id).status == "requires_payment_method"


def test_3ds_card_charged_off_session_requires_action(customer):
    card = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_authenticationRequired")
    assert card.last4 == "3184"
    result = _charge(customer, card.payment_method_id)
    assert result.status == "requires_action"


def test_payment_intent_find_by_metadata(customer, visa):
    first = _charge(customer, visa.payment_method_id, invoice="1")
    second = _charge(customer, visa.payment_method_id, invoice="2", metadata={"invoice_id": "2", "attempt": "2"})
    other_customer = gateway.customer_create(email="bob@example.com", team_id=8, idempotency_key="team:8")
    other_card = gateway.payment_method_attach(customer_id=other_customer, payment_method="pm_card_visa")
    _charge(other_customer, other_card.payment_method_id, invoice="3")

    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "1"}) == first
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "2", "attempt": "2"}) == second
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "2", "attempt": "1"}) is None
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "3"}) is None  # not theirs
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "404"}) is None


def test_payment_intent_find_pages_through_more_than_one_page(customer, visa, monkeypatch):
    monkeypatch.setattr(gateway, "LIST_PAGE_SIZE", 2)
    results = [_charge(customer, visa.payment_method_id, invoice=str(n)) for n in range(5)]
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "4"}) == results[4]
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "0"}) == results[0]


def test_payment_intents_find_returns_every_charge_of_an_attempt_oldest_first(customer, visa):
    first = _charge(customer, visa.payment_method_id, invoice="5")
    again = _charge(customer, visa.payment_method_id, invoice="5")  # a request that landed twice
    _charge(customer, visa.payment_method_id, invoice="6")
    assert gateway.payment_intents_find(customer_id=customer, metadata={"invoice_id": "5", "attempt": "1"}) == [
        first,
        again,
    ]
    assert gateway.payment_intents_find(customer_id=customer, metadata={"invoice_id": "7"}) == []


def test_refunds_for_payment_intent_lists_what_was_refunded(customer, visa):
    charge = _charge(customer, visa.payment_method_id)
    assert gateway.refunds_for_payment_intent(payment_intent_id=charge.id) == []
    first = gateway.refund_create(payment_intent_id=charge.id, amount_cents=500, idempotency_key="r1")
    second = gateway.refund_create(payment_intent_id=charge.id, amount_cents=700, idempotency_key="r2")
    refunds = gateway.refunds_for_payment_intent(payment_intent_id=charge.id)
    assert sorted(refunds, key=lambda r: r.amount_cents) == [first, second]


def test_failed_charge_is_found_by_metadata(customer):
    failing = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_chargeCustomerFail")
    failed = _charge(customer, failing.payment_method_id, invoice="9")
    assert gateway.payment_intent_find(customer_id=customer, metadata={"invoice_id": "9"}) == failed


def test_refund_create(customer, visa):
    charge = _charge(customer, visa.payment_method_id)
    refund = gateway.refund_create(
        payment_intent_id=charge.id, amount_cents=500, idempotency_key="refund:1", reason="goodwill"
    )
    assert refund.id.startswith("re_")
    assert (refund.status, refund.amount_cents) == ("succeeded", 500)


def test_refund_of_a_failed_charge_is_an_invalid_request(customer):
    failing = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_chargeCustomerFail")
    failed = _charge(customer, failing.payment_method_id)
    with pytest.raises(gateway.PaymentInvalidRequest):
        gateway.refund_create(payment_intent_id=failed.id, amount_cents=500, idempotency_key="refund:2")


def test_retrieve_unknown_payment_intent_is_an_invalid_request(stripe_local):
    with pytest.raises(gateway.PaymentInvalidRequest) as caught:
        gateway.payment_intent_retrieve(payment_intent_id="pi_doesnotexist")
    assert caught.value.extra["http_status"] == 404


# --- Unavailable, misconfigured, 5xx, 429 -------------------------------------------------------------


def test_unreachable_stripe_raises_provider_unavailable_quickly(settings):
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(gateway.PaymentProviderUnavailable) as caught:
        gateway.customer_create(email="a@example.com", team_id=1, idempotency_key="k")
    with pytest.raises(gateway.PaymentProviderUnavailable):
        gateway.payment_intent_create(
            customer_id="cus_x",
            payment_method_id="pm_x",
            amount_cents=100,
            currency="usd",
            metadata={},
            idempotency_key="k2",
        )
    assert gateway.ping() is False
    assert time.monotonic() - started < 3
    assert caught.value.status == 503
    assert caught.value.code == "payment_provider_unavailable"


def test_the_read_timeout_is_the_setting_and_a_request_is_sent_once(settings):
    """A server that accepts and never answers: the client gives up after STRIPE_READ_TIMEOUT_SECONDS,
    having opened one connection (no retries: a re-sent charge could charge twice)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{listener.getsockname()[1]}"
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS, settings.STRIPE_READ_TIMEOUT_SECONDS = 1.0, 0.5
    try:
        started = time.monotonic()
        with pytest.raises(gateway.PaymentProviderUnavailable):
            _charge("cus_x", "pm_x")
        elapsed = time.monotonic() - started
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)
        for sock in accepted:
            sock.close()
    assert 0.5 <= elapsed < 0.5 + 1.5
    assert len(accepted) == 1


def test_the_quiet_period_is_derived_from_the_timeouts_and_never_shorter_than_a_request(settings):
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS, settings.STRIPE_READ_TIMEOUT_SECONDS = 2.0, 7.0
    settings.TIERLAB_PAYMENT_QUIET_SECONDS = None
    assert gateway.request_timeout() == (2.0, 7.0)
    assert gateway.request_max_seconds() == 9.0  # one try: MAX_NETWORK_RETRIES is 0
    assert gateway.charge_quiet_period() == timedelta(seconds=9.0 + gateway.TRANSIT_MAX_SECONDS)
    settings.TIERLAB_PAYMENT_QUIET_SECONDS = 30
    assert gateway.charge_quiet_period() == timedelta(seconds=30)
    settings.TIERLAB_PAYMENT_QUIET_SECONDS = 5  # shorter than the client may wait: raised above it
    assert gateway.charge_quiet_period() == timedelta(seconds=10)
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS, settings.STRIPE_READ_TIMEOUT_SECONDS = 3.0, 10.0
    settings.TIERLAB_PAYMENT_QUIET_SECONDS = None
    assert gateway.charge_quiet_period() == timedelta(seconds=73)  # the defaults, as documented


def test_refused_credentials_are_reported_as_misconfigured(stripe_local, settings):
    settings.STRIPE_SECRET_KEY = "pk_test_not_a_secret_key"  # localstripe answers 401 to anything but sk_
    with pytest.raises(gateway.PaymentProviderUnavailable) as caught:
        gateway.customer_create(email="a@example.com", team_id=1, idempotency_key="k")
    assert caught.value.code == "payment_provider_misconfigured"
    assert gateway.ping() is False


class _StubHandler(http.server.BaseHTTPRequestHandler):
    status = 500

    def _answer(self):
        body = json.dumps({"error": {"type": "api_error", "message": "stub"}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [500, 503, 429])
def test_5xx_and_rate_limits_are_unavailable_and_not_retried(settings, status):
    calls = []

    class Handler(_StubHandler):
        def _answer(self):
            calls.append(self.path)
            super()._answer()

        do_GET = do_POST = _answer

    Handler.status = status
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(gateway.PaymentProviderUnavailable):
            _charge("cus_x", "pm_x")
    finally:
        server.shutdown()
        server.server_close()
    assert len(calls) == 1  # max_network_retries = 0: a charge is never re-sent by the SDK


# --- Webhook signatures -------------------------------------------------------------------------------


def _signed(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def test_webhook_event_verify(settings):
    payload = json.dumps(
        {"id": "evt_1", "object": "event", "type": "customer.created", "data": {"object": {}}}
    ).encode()
    event = gateway.webhook_event_verify(
        payload=payload, signature_header=_signed(payload, settings.STRIPE_WEBHOOK_SECRET)
    )
    assert (event.id, event.type) == ("evt_1", "customer.created")
    assert event.payload["data"] == {"object": {}}


@pytest.mark.parametrize(
    "make_header",
    [
        lambda payload, secret: _signed(payload, "whsec_wrong"),
        lambda payload, secret: _signed(payload + b" ", secret),
        lambda payload, secret: _signed(payload, secret, timestamp=int(time.time()) - 3600),  # replayed later
        lambda payload, secret: "",
        lambda payload, secret: "garbage",
    ],
    ids=["wrong-secret", "other-payload", "too-old", "missing", "garbage"],
)
def test_webhook_event_verify_refuses_bad_signatures(settings, make_header):
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "customer.created", "data": {}}).encode()
    with pytest.raises(gateway.WebhookSignatureInvalid):
        gateway.webhook_event_verify(
            payload=payload, signature_header=make_header(payload, settings.STRIPE_WEBHOOK_SECRET)
        )


def test_webhook_event_verify_refuses_a_signed_non_event(settings):
    for payload in (b"not json", b"[]", b'{"object": "event"}'):
        with pytest.raises(gateway.WebhookSignatureInvalid):
            gateway.webhook_event_verify(
                payload=payload, signature_header=_signed(payload, settings.STRIPE_WEBHOOK_SECRET)
            )


# --- /healthz -----------------------------------------------------------------------------------------


def test_healthz_reports_stripe_without_failing_on_it(client, stripe_local, settings):
    body = client.get(reverse("healthz")).json()
    assert body["stripe"]["status"] == "ok"

    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_loopback_port()}"
    response = client.get(reverse("healthz"))
    assert response.status_code == 200  # Stripe is reported, not required
    assert response.json()["stripe"]["status"] == "unreachable"


# --- The `localstripe` command ------------------------------------------------------------------------


def test_localstripe_command_keeps_state_in_var_mode_across_restarts(tmp_path):
    state = tmp_path / "localstripe.pickle"
    port = free_loopback_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--state", "var", "--state-file", str(state)]

    process = start_localstripe(port=port, log_path=tmp_path / "1.log", extra_args=args)
    try:
        created = json.loads(localstripe_request(base, "POST", "/v1/customers", {"email": "kept@example.com"}))
    finally:
        stop_process(process)  # SIGTERM: the store is written at shutdown at the latest
    assert state.exists()

    process = start_localstripe(port=port, log_path=tmp_path / "2.log", extra_args=args)
    try:
        assert _customer(base, created["id"])["email"] == "kept@example.com"
    finally:
        stop_process(process)


def test_localstripe_memory_mode_writes_nothing(localstripe_server, tmp_path):
    # The session server runs in memory mode: localstripe's own /tmp pickle is not written.
    before = Path("/tmp/localstripe.pickle").stat().st_mtime if Path("/tmp/localstripe.pickle").exists() else None
    localstripe_request(localstripe_server, "POST", "/v1/customers", {"email": "gone@example.com"})
    after = Path("/tmp/localstripe.pickle").stat().st_mtime if Path("/tmp/localstripe.pickle").exists() else None
    assert before == after
