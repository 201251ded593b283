from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tiers.selectors import tier_list_public

if TYPE_CHECKING:
    pass


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "tiers/home.html", {"tiers": tier_list_public()})


def pricing(request: HttpRequest) -> HttpResponse:
    return render(request, "tiers/pricing.html", {"tiers": tier_list_public()})
