"""The simulated payment processor: the Stripe gateway's interface (billing/stripe_gateway.py), in memory.

A run's charges are many (every renewal of every paying team) and a round trip to localstripe per
charge would dominate a long run, so by default the simulator answers the gateway's calls itself with
the behaviour of Stripe's documented test payment methods, the ones TierLab's pages and API accept:

| payment method                         | attach                 | off-session charge                         |
|----------------------------------------|------------------------|--------------------------------------------|
| pm_card_visa, pm_card_mastercard       | ok                     | succeeds                                   |
| pm_card_visa_chargeDeclined            | PaymentDeclined        | (never attached)                           |
| pm_card_chargeCustomerFail             | ok                     | fails: requires_payment_method, card_declined |
| pm_card_authenticationRequired,        | ok                     | requires_action, authentication_required   |
| pm_card_threeDSecure2Required          |                        |                                            |
| anything else                          | PaymentInvalidRequest  |                                            |

Everything the billing engine relies on holds: an attached method gets its own ``pm_...`` id, a charge
is one call that returns a PaymentIntent (a decline is a result, not an exception), a charge can be
found again by its metadata, refunds refund at most what was paid, and an idempotency key returns the
first result again (as real Stripe does; localstripe ignores them). Ids are counters, so a run is
deterministic; nothing reads a clock.

``processor_installed`` puts a processor in the gateway's place for the duration of a ``with`` block,
by replacing the gateway module's operation functions (``gateway.payment_intent_create`` etc.: the
billing engine calls them through the module, never by a name imported from it) and restoring them
afterwards. Only simulation runs do that, in a process of their own (see simulation/runner.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from billing import stripe_gateway as gateway

# The documented test payment methods and what they do (see the table above).
SUCCEEDS = {"pm_card_visa": ("visa", "4242"), "pm_card_mastercard": ("mastercard", "4444")}
DECLINED_AT_ATTACH = {"pm_card_visa_chargeDeclined": ("visa", "0002")}
CHARGES_FAIL = {"pm_card_chargeCustomerFail": ("visa", "0341")}
NEEDS_AUTHENTICATION = {
    "pm_card_authenticationRequired": ("visa", "3184"),
    "pm_card_threeDSecure2Required": ("visa", "3220"),
}
OPERATIONS = (
    "customer_create",
    "payment_method_attach",
    "payment_intent_create",
    "payment_intent_find",
    "payment_intents_find",
    "payment_intent_retrieve",
    "refund_create",
    "ping",
)


@dataclass
class _Card:
    behaviour: str  # "succeeds", "fails", "authentication"
    brand: str
    last4: str
    customer_id: str = ""


@dataclass
class SimulatedProcessor:
    """Stripe's test-mode behaviour for the gateway's operations, in memory (see the module docstring)."""

    customers: dict[str, dict[str, str]] = field(default_factory=dict)
    cards: dict[str, _Card] = field(default_factory=dict)
    intents: dict[str, gateway.PaymentIntentResult] = field(default_factory=dict)
    intent_customer: dict[str, str] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    by_idempotency_key: dict[str, object] = field(default_factory=dict)
    charges: int = 0
    _counter: int = 0

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_sim_{self._counter:08d}"

    # --- The gateway's operations, same signatures --------------------------------------------------

    def customer_create(self, *, email: str, team_id: int, idempotency_key: str) -> str:
        if idempotency_key in self.by_idempotency_key:
            return str(self.by_idempotency_key[idempotency_key])
        customer_id = self._next_id("cus")
        self.customers[customer_id] = {"email": email, "team_id": str(team_id)}
        self.by_idempotency_key[idempotency_key] = customer_id
        return customer_id

    def payment_method_attach(
        self, *, customer_id: str, payment_method: str, make_default: bool = True
    ) -> gateway.CardDetails:
        if customer_id not in self.customers:
            raise gateway.PaymentInvalidRequest(f"No such customer: '{customer_id}'", extra={"http_status": 404})
        if payment_method in DECLINED_AT_ATTACH:
            raise gateway.PaymentDeclined(
                "Your card was declined.",
                extra={"operation": "payment_method_attach", "decline_code": "generic_decline"},
            )
        for table, behaviour in (
            (SUCCEEDS, "succeeds"),
            (CHARGES_FAIL, "fails"),
            (NEEDS_AUTHENTICATION, "authentication"),
        ):
            if payment_method in table:
                brand, last4 = table[payment_method]
                card = _Card(behaviour=behaviour, brand=brand, last4=last4, customer_id=customer_id)
                break
        else:
            raise gateway.PaymentInvalidRequest(
                f"No such PaymentMethod: '{payment_method}'",
                extra={"operation": "payment_method_attach", "http_status": 404},
            )
        pm_id = self._next_id("pm")
        self.cards[pm_id] = card
        if make_default:
            self.customers[customer_id]["default"] = pm_id
        return gateway.CardDetails(payment_method_id=pm_id, brand=card.brand, last4=card.last4)

    def payment_intent_create(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
        description: str = "",
    ) -> gateway.PaymentIntentResult:
        if idempotency_key in self.by_idempotency_key:
            return self.intents[str(self.by_idempotency_key[idempotency_key])]
        card = self.cards.get(payment_method_id)
        if card is None or card.customer_id != customer_id:
            raise gateway.PaymentInvalidRequest(
                f"No such PaymentMethod: '{payment_method_id}'", extra={"operation": "payment_intent_create"}
            )
        self.charges += 1
        intent_id = self._next_id("pi")
        common = {
            "id": intent_id,
            "amount_cents": amount_cents,
            "currency": currency.lower(),
            "metadata": {str(k): str(v) for k, v in metadata.items()},
        }
        if card.behaviour == "succeeds":
            intent = gateway.PaymentIntentResult(status="succeeded", **common)
        elif card.behaviour == "authentication":
            intent = gateway.PaymentIntentResult(
                status="requires_action",
                failure_code="authentication_required",
                failure_message="This payment requires authentication; the customer is not present.",
                **common,
            )
        else:
            intent = gateway.PaymentIntentResult(
                status="requires_payment_method",
                failure_code="card_declined",
                failure_message="Your card was declined.",
                **common,
            )
        self.intents[intent_id] = intent
        self.intent_customer[intent_id] = customer_id
        self.by_idempotency_key[idempotency_key] = intent_id
        return intent

    def payment_intent_find(self, *, customer_id: str, metadata: dict[str, str]) -> gateway.PaymentIntentResult | None:
        wanted = {str(k): str(v) for k, v in metadata.items()}
        matches = [
            intent
            for intent_id, intent in self.intents.items()
            if self.intent_customer.get(intent_id) == customer_id and wanted.items() <= intent.metadata.items()
        ]
        return matches[-1] if matches else None  # ids grow: the last is the newest

    def payment_intents_find(self, *, customer_id: str, metadata: dict[str, str]) -> list[gateway.PaymentIntentResult]:
        """Every match, oldest first: what billing.payments looks an attempt up by once its outcome was
        lost (the engine's recovery path; the one-result form above is the older interface)."""
        wanted = {str(k): str(v) for k, v in metadata.items()}
        return [
            intent
            for intent_id, intent in self.intents.items()
            if self.intent_customer.get(intent_id) == customer_id and wanted.items() <= intent.metadata.items()
        ]

    def payment_intent_retrieve(self, *, payment_intent_id: str) -> gateway.PaymentIntentResult:
        intent = self.intents.get(payment_intent_id)
        if intent is None:
            raise gateway.PaymentInvalidRequest(f"No such payment_intent: '{payment_intent_id}'")
        return intent

    def refund_create(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str, reason: str = ""
    ) -> gateway.RefundResult:
        if idempotency_key in self.by_idempotency_key:
            return self.by_idempotency_key[idempotency_key]  # type: ignore[return-value]
        intent = self.intents.get(payment_intent_id)
        if intent is None or not intent.succeeded:
            raise gateway.PaymentInvalidRequest(f"No succeeded payment_intent '{payment_intent_id}' to refund.")
        left = intent.amount_cents - self.refunded.get(payment_intent_id, 0)
        if amount_cents > left:
            raise gateway.PaymentInvalidRequest(
                f"Refund amount ({amount_cents}) is greater than what is left ({left})."
            )
        self.refunded[payment_intent_id] = self.refunded.get(payment_intent_id, 0) + amount_cents
        refund = gateway.RefundResult(id=self._next_id("re"), status="succeeded", amount_cents=amount_cents)
        self.by_idempotency_key[idempotency_key] = refund
        return refund

    def ping(self) -> bool:
        return True


@contextlib.contextmanager
def processor_installed(processor: SimulatedProcessor) -> Iterator[SimulatedProcessor]:
    """The gateway's operations answered by ``processor`` inside the block, restored afterwards."""
    saved = {name: getattr(gateway, name) for name in OPERATIONS}
    try:
        for name in OPERATIONS:
            setattr(gateway, name, getattr(processor, name))
        yield processor
    finally:
        for name, function in saved.items():
            setattr(gateway, name, function)
