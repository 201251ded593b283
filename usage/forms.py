from __future__ import annotations

from decimal import Decimal

from django import forms

from usage.dashboard import RANGE_CHOICES, RANGE_PERIOD


class UsageRangeForm(forms.Form):
    """The chart's ?range= (GET). Anything unknown falls back to the period, with a message."""

    range = forms.ChoiceField(choices=list(RANGE_CHOICES.items()), required=False)

    def range_key(self) -> str:
        return self.cleaned_data.get("range") or RANGE_PERIOD


class SpendCapForm(forms.Form):
    """The team's own monthly spend cap, in the tier's currency units (dollars), stored as cents.

    An empty amount removes the cap. The rules (tier must bill overage, cap >= tier fee) live in
    tiers.services.subscription_spend_cap_set; its errors come back as errors on ``amount``.
    """

    MODE_HARD = "hard"
    MODE_NOTIFY = "notify"

    amount = forms.DecimalField(
        label="Monthly spend cap",
        required=False,
        min_value=Decimal("0"),
        max_value=Decimal("10000000"),
        decimal_places=2,
        max_digits=12,
        help_text="The most this period's bill (tier fee + overage) may reach. Leave empty for no cap.",
    )
    mode = forms.ChoiceField(
        label="When the cap is reached",
        choices=[
            (MODE_HARD, "Stop API calls (insufficient_quota) until the next period"),
            (MODE_NOTIFY, "Keep serving, email me only"),
        ],
        initial=MODE_HARD,
        widget=forms.RadioSelect,
    )

    def cap_cents(self) -> int | None:
        amount = self.cleaned_data.get("amount")
        # Decimal all the way: float dollars would turn 19.99 into 1998 cents.
        return None if amount is None else int(amount * 100)

    def hard(self) -> bool:
        return self.cleaned_data["mode"] == self.MODE_HARD
