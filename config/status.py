"""/status/: the system status for people, read from the same checks as /healthz (config/health.py).

/healthz stays JSON for load balancers and monitors; this page says the same thing in words: whether
the service is up, each part's state, when the billing scheduler last ran and whether Stripe answers.
It names parts, never paths, hosts or error texts (those are for operators, in /healthz and the logs).
The page answers 200 even when a part is down: it is the page that explains the outage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from config.health import health_report

# What each /healthz check means to a person.
PART_NAMES = {
    "database": ("Accounts and usage records", "Sign-in, keys, usage and invoices are stored."),
    "cache": ("Rate-limit counters", "Short-lived counters and caches answer."),
    "broker": ("Background jobs", "Billing, emails and usage roll-ups are queued."),
    "disk": ("Storage space", "There is room to record usage."),
    "quota_backend": ("Quota service", "Quotas are counted and kept."),
}


@dataclass(frozen=True)
class Part:
    key: str
    name: str
    meaning: str
    ok: bool
    detail: str


def _parts(body: dict) -> list[Part]:
    parts = [
        Part(key, *PART_NAMES.get(key, (key, "")), ok=check["status"] == "ok", detail="")
        for key, check in body["checks"].items()
    ]
    scheduler = body["scheduler"]
    beat_ok = scheduler["status"] == "ok"
    age = scheduler.get("age_seconds")
    beat_detail = f"Last ran {round(age)} s ago." if age is not None else "Not run yet."
    meaning = "Periods close and renewals are charged."
    parts.append(Part("scheduler", "Billing scheduler", meaning, beat_ok, beat_detail))
    stripe_ok = body["stripe"]["status"] == "ok"
    parts.append(Part("stripe", "Payments (Stripe)", "Cards are saved and charged.", stripe_ok, ""))
    return parts


@never_cache
@require_GET
def status_page(request: HttpRequest) -> HttpResponse:
    healthy, body = health_report()
    context = {
        "healthy": healthy,
        "parts": _parts(body),
        "checked_at": datetime.fromisoformat(body["time"]),
    }
    return render(request, "status.html", context)
