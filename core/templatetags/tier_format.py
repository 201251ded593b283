from __future__ import annotations

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

register = template.Library()

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


@register.filter
def money(cents: int | None, currency: str = "usd") -> str:
    """Integer minor units as a price: 2000, "usd" -> "$20.00"; unknown currencies get their code."""
    if cents is None:
        return "—"
    sign = "-" if cents < 0 else ""
    whole, minor = divmod(abs(int(cents)), 100)
    symbol = _SYMBOLS.get((currency or "").lower())
    amount = f"{intcomma(whole)}.{minor:02d}"
    return f"{sign}{symbol}{amount}" if symbol else f"{sign}{amount} {currency.upper()}"


@register.filter
def limit(value: int | None) -> str:
    """A quota for display: None is unlimited."""
    return "Unlimited" if value is None else intcomma(value)
