"""Forms of the billing pages: choosing a test card, and the operator's reasons in the admin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms

from tiers.models import Tier

if TYPE_CHECKING:
    from billing.models import BillingCustomer

# Stripe's documented test payment methods (https://docs.stripe.com/testing#cards). Stripe.js cannot
# load offline, so the pages let the subscriber pick one of these instead of typing a card number.
TEST_PAYMENT_METHODS: list[tuple[str, str]] = [
    ("pm_card_visa", "Visa, succeeds"),
    ("pm_card_mastercard", "Mastercard, succeeds"),
    ("pm_card_visa_chargeDeclined", "Declined at once"),
    ("pm_card_chargeCustomerFail", "Accepted, then every charge fails"),
]
# The radio value meaning "the card already on file": the services take ``payment_method=None`` for it.
CARD_ON_FILE = "on_file"

DECLINED_MESSAGE = "Your card was declined. Nothing was charged and nothing changed: try another card."


class PaymentMethodChoiceForm(forms.Form):
    """One radio list: the card on file (if any, preselected), then Stripe's test cards."""

    payment_method = forms.ChoiceField(label="Card", widget=forms.RadioSelect)

    def __init__(self, *args, customer: BillingCustomer | None = None, require_new: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        choices = list(TEST_PAYMENT_METHODS)
        has_card = bool(customer and customer.default_payment_method_id)
        if has_card and not require_new:
            label = f"{customer.card_brand.title() or 'Card'} •••• {customer.card_last4 or '????'} (on file)"
            choices.insert(0, (CARD_ON_FILE, label))
        field = self.fields["payment_method"]
        field.choices = choices
        self.initial.setdefault("payment_method", choices[0][0])

    @property
    def selected_payment_method(self) -> str | None:
        """The Stripe payment method to use, or None for the card on file."""
        value = self.cleaned_data["payment_method"]
        return None if value == CARD_ON_FILE else value


class CheckoutForm(PaymentMethodChoiceForm):
    """Checkout: a card is asked for only when the change may charge one (not for a move to a free tier)."""

    def __init__(self, *args, card_needed: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not card_needed:
            del self.fields["payment_method"]

    @property
    def selected_payment_method(self) -> str | None:
        if "payment_method" not in self.fields:
            return None
        return super().selected_payment_method


class CardChangeForm(PaymentMethodChoiceForm):
    """Change the card on file: only the test cards (choosing the card on file would change nothing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, require_new=True, **kwargs)
        self.fields["payment_method"].label = "New card"


# --- Admin intermediate pages ------------------------------------------------------------------------


class OperatorReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=200, help_text="Written to the customer's billing audit log.", widget=forms.TextInput()
    )


class OperatorTierMoveForm(OperatorReasonForm):
    tier = forms.ModelChoiceField(
        queryset=Tier.objects.selectable(),
        help_text="Takes effect now, without a proration charge; later renewals bill this tier's price.",
    )
