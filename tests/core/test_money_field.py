"""Money typed by people (issue 16, finding 9): shown and typed in dollars, stored in cents, exactly."""

from __future__ import annotations

import pytest
from django import forms

from core.money import MinorUnitsField, cents_to_major


class PriceForm(forms.Form):
    price_cents = MinorUnitsField(label="Price", required=False)
    overage_cents = MinorUnitsField(label="Overage", min_cents=1, required=False)


@pytest.mark.parametrize(
    ("typed", "cents"),
    [("200", 20_000), ("200.00", 20_000), ("19.99", 1_999), ("0.60", 60), ("0.01", 1), ("0", 0), ("", None)],
)
def test_typed_dollars_become_exact_cents(typed, cents):
    form = PriceForm(data={"price_cents": typed})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["price_cents"] == cents


@pytest.mark.parametrize(
    ("field", "typed", "message"),
    [
        ("price_cents", "12.345", "2 decimal places"),
        ("price_cents", "-1", "greater than or equal to 0"),
        ("price_cents", "twelve", "Enter a number"),
        ("overage_cents", "0", "greater than or equal to 0.01"),
    ],
)
def test_bad_amounts_are_refused_with_a_message(field, typed, message):
    form = PriceForm(data={field: typed})
    assert not form.is_valid()
    assert message in " ".join(form.errors[field])


def test_stored_cents_are_shown_in_dollars_and_what_was_typed_is_shown_again():
    assert (str(cents_to_major(20_000)), str(cents_to_major(60))) == ("200.00", "0.60")
    unbound = PriceForm(initial={"price_cents": 20_000})
    assert 'value="200.00"' in str(unbound["price_cents"])
    bound = PriceForm(data={"price_cents": "12.345"})
    bound.is_valid()
    assert 'value="12.345"' in str(bound["price_cents"])
