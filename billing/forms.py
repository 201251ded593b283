"""Forms of the billing pages: a card entered with Stripe.js, and the operator's reasons in the admin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms

from tiers.models import Tier

if TYPE_CHECKING:
    from billing.models import BillingCustomer

# The radio value meaning "the card already on file": the services take ``payment_method=None`` for it.
CARD_ON_FILE = "on_file"
CARD_NEW = "new"

DECLINED_MESSAGE = "Your card was declined. Nothing was charged and nothing changed: try another card."
CARD_MISSING_MESSAGE = "Enter your card's number, expiry date and CVC."


class CardEntryForm(forms.Form):
    """A card typed into Stripe.js's card Element and confirmed there (a SetupIntent, 3-D Secure
    included): the page's script posts the SetupIntent's and the payment method's ids, which the
    server checks with Stripe before saving (customers.payment_method_update). No card number ever
    reaches this server. With a card on file, a radio chooses between it (preselected) and a new card.

    ``payment_method`` is the field errors about the card are reported on (the card Element's box)."""

    card = forms.ChoiceField(label="Card", widget=forms.RadioSelect, required=False)
    payment_method = forms.CharField(label="Card details", required=False, max_length=255, widget=forms.HiddenInput)
    setup_intent = forms.CharField(required=False, max_length=255, widget=forms.HiddenInput)

    def __init__(self, *args, customer: BillingCustomer | None = None, require_new: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        has_card = bool(customer and customer.default_payment_method_id)
        if has_card and not require_new:
            label = f"{customer.card_brand.title() or 'Card'} •••• {customer.card_last4 or '????'} (on file)"
            self.fields["card"].choices = [(CARD_ON_FILE, label), (CARD_NEW, "A new card")]
            self.initial.setdefault("card", CARD_ON_FILE)
        else:
            del self.fields["card"]

    @property
    def wants_new_card(self) -> bool:
        if "card" not in self.fields:
            return True
        # No choice posted (a client without the radio): a confirmed card posted means that one.
        chosen = self.cleaned_data.get("card") or (CARD_NEW if self.cleaned_data.get("payment_method") else "")
        return chosen == CARD_NEW

    def clean(self):
        data = super().clean()
        if self.wants_new_card and not (data.get("payment_method") and data.get("setup_intent")):
            self.add_error("payment_method", CARD_MISSING_MESSAGE)
        return data

    @property
    def selected_payment_method(self) -> str | None:
        """The confirmed payment method to save, or None for the card on file."""
        return self.cleaned_data["payment_method"] if self.wants_new_card else None

    @property
    def selected_setup_intent(self) -> str | None:
        return self.cleaned_data["setup_intent"] if self.wants_new_card else None


class CheckoutForm(CardEntryForm):
    """Checkout: a card is asked for only when the change may charge one (not for a move to a free
    tier). ``payment_intent``: the charge's PaymentIntent after the page ran 3-D Secure for it
    (checkout_payment.checkout_payment_confirm); the card fields are not asked again then."""

    payment_intent = forms.CharField(required=False, max_length=255, widget=forms.HiddenInput)

    def __init__(self, *args, card_needed: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_needed = card_needed

    @property
    def wants_new_card(self) -> bool:
        if not self.card_needed or self.cleaned_data.get("payment_intent"):
            return False
        return super().wants_new_card


class CardChangeForm(CardEntryForm):
    """Change the card on file: only a new card (choosing the card on file would change nothing)."""

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
