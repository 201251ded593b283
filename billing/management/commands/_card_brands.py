"""Card brands for localstripe, which calls every card a Visa.

localstripe 1.15.10 hard-codes ``card.brand = "visa"`` on every PaymentMethod (and ``"Visa"`` on the
legacy Card source), so a Mastercard saved with ``pm_card_mastercard`` (5555 5555 5555 4444) came back
as a Visa and was stored, shown and audited as one. Real Stripe derives the brand from the number; the
wrapper (``manage.py localstripe``) patches localstripe to do the same, so everything behind the gateway
(the checkout, /billing/, the admin, the audit log) sees what real Stripe would send.

The prefixes are the card networks' published IIN ranges, as Stripe's test cards use them
(https://docs.stripe.com/testing#cards).
"""

from __future__ import annotations

from typing import Any

# (brand as PaymentMethod.card.brand says it, legacy Card.brand display name, IIN ranges (low, high) by
# prefix length: a number matches when its first len(low) digits lie in [low, high]).
_BRANDS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("amex", "American Express", [("34", "34"), ("37", "37")]),
    ("diners", "Diners Club", [("300", "305"), ("36", "36"), ("38", "39")]),
    ("jcb", "JCB", [("3528", "3589")]),
    ("discover", "Discover", [("6011", "6011"), ("644", "649"), ("65", "65")]),
    ("unionpay", "UnionPay", [("62", "62"), ("81", "81")]),
    ("mastercard", "MasterCard", [("51", "55"), ("2221", "2720")]),
    ("visa", "Visa", [("4", "4")]),
]


def card_brand(number: str) -> tuple[str, str]:
    """(PaymentMethod brand, legacy Card brand) of a card number; ("unknown", "Unknown") if none matches."""
    digits = "".join(ch for ch in str(number) if ch.isdigit())
    for brand, display, ranges in _BRANDS:
        for low, high in ranges:
            if low <= digits[: len(low)] <= high:
                return brand, display
    return "unknown", "Unknown"


def patch_card_brands(resources: Any) -> None:
    """Make localstripe's PaymentMethod and Card objects carry the brand of their number."""
    payment_method_init = resources.PaymentMethod.__init__
    card_init = resources.Card.__init__

    def payment_method_brand_init(self: Any, *args: Any, **kwargs: Any) -> None:
        payment_method_init(self, *args, **kwargs)
        card = getattr(self, "card", None)
        if isinstance(card, dict) and getattr(self, "_card_number", None):
            card["brand"] = card_brand(self._card_number)[0]

    def card_brand_init(self: Any, *args: Any, **kwargs: Any) -> None:
        card_init(self, *args, **kwargs)
        if getattr(self, "_card_number", None):
            self.brand = card_brand(self._card_number)[1]

    resources.PaymentMethod.__init__ = payment_method_brand_init
    resources.Card.__init__ = card_brand_init
