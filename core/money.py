"""Money typed by people: amounts are entered and shown in the currency's major unit ("200.00" dollars)
and stored as integer minor units (20000 cents), as everywhere in TierLab.

``MinorUnitsField`` is a form field for a model's ``*_cents`` column: it shows the stored cents as
"200.00" and cleans what is typed back to an exact integer of cents (Decimal arithmetic, never float:
19.99 would otherwise become 1998). More than two decimals is an error, not a rounding. Every currency
TierLab prices in (usd, eur, gbp) has 100 minor units to the major unit, which is also what
``core.templatetags.tier_format.money`` assumes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

MINOR_UNITS = 100
DECIMAL_PLACES = 2


def cents_to_major(cents: int) -> Decimal:
    """20000 -> Decimal("200.00")."""
    return (Decimal(int(cents)) / MINOR_UNITS).quantize(Decimal(1).scaleb(-DECIMAL_PLACES))


def major_to_cents(amount: Decimal) -> int:
    """Decimal("199.99") -> 19999, exactly (the amount has at most two decimals, see the field)."""
    return int(amount * MINOR_UNITS)


class MinorUnitsField(forms.DecimalField):
    """A money amount typed in major units (dollars), cleaned to integer minor units (cents)."""

    def __init__(self, *, min_cents: int | None = 0, max_cents: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("decimal_places", DECIMAL_PLACES)
        kwargs.setdefault("max_digits", 14)
        if min_cents is not None:
            kwargs.setdefault("min_value", cents_to_major(min_cents))
        if max_cents is not None:
            kwargs.setdefault("max_value", cents_to_major(max_cents))
        kwargs.setdefault("localize", False)
        super().__init__(**kwargs)
        self.widget.attrs.setdefault("step", "0.01")
        self.widget.attrs.setdefault("inputmode", "decimal")

    def prepare_value(self, value: Any) -> Any:
        # An int is the stored cents (the initial value from the model); what a person typed comes back
        # as a string and is shown again as typed.
        if isinstance(value, int) and not isinstance(value, bool):
            return cents_to_major(value)
        return super().prepare_value(value)

    def clean(self, value: Any) -> int | None:
        amount = super().clean(value)
        return None if amount is None else major_to_cents(amount)

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            typed = self.clean(data)
        except forms.ValidationError:
            return True
        return typed != (None if initial in (None, "") else int(initial))
