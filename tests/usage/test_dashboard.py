"""The subscriber dashboard (/dashboard/): every figure checked against a usage history worked out by
hand, at a frozen time; ranges, the spend-cap form, team isolation and the query budget."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
import time_machine
from django.test import Client

from accounts.selectors import team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear, entitlements_for_team
from usage.dashboard import dashboard_for_team
from usage.metering import limits_for
from usage.models import UsageAlert
from usage.quotas import get_quota_backend
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold
from usage.services import usage_records_create

SMALL, BIG = "Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct"
OTHER_MODEL = "Llama-Other-Team-Private"  # not in the catalog: any appearance is a leak
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)  # sign-up: the period runs May 4 08:00 - Jun 4 08:00
NOW = datetime(2026, 5, 20, 12, 30, 5, tzinfo=UTC)  # early in the minute: the browser test runs the clock on
PASSWORD = "dash-board-pass-1"

_sequence = iter(range(1, 10_000))


def event(team_id: int, at: datetime, model: str, prompt: int, completion: int) -> UsageEvent:
    return UsageEvent(
        request_id=f"req-{next(_sequence)}",
        team_id=team_id,
        api_key_id=None,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        created_at=at,
    )


def admit(team_id: int, at: datetime, model: str, prompt: int, completion: int) -> None:
    """One request admitted through the quota backend at ``at`` (counters and record), as the model
    API does it."""
    one = event(team_id, at, model, prompt, completion)
    entitlements = entitlements_for_team(team_id=team_id)
    decision = get_quota_backend().consume(
        team_id=team_id,
        request_id=one.request_id,
        limits=limits_for(entitlements=entitlements, now=at),
        tokens=one.total_tokens,
        event=one,
        now=at,
    )
    assert decision.allowed


def metered_tier(catalog) -> Tier:
    """$10 a month, 8,000 included tokens, then 0.1 cent a token; 10 RPM, 5,000 TPM, 100 RPD."""
    tier = Tier.objects.create(
        slug="metered", name="Metered", is_paid=True, price_cents=1_000, monthly_tokens=8_000,
        requests_per_minute=10, tokens_per_minute=5_000, requests_per_day=100,
        overage_policy="bill", overage_cents_per_million_tokens=100_000,
    )  # fmt: skip
    tier.allowed_models.set(catalog["pro"].allowed_models.all())
    return tier


@pytest.fixture
def history(catalog):
    return build_history(catalog)


def build_history(catalog):
    """The subscriber's history (all times UTC):
    - May 3 20:00, before the period: 1 x SMALL 500 tokens (only the 30-day range shows it);
    - May 10 09:xx: 3 x SMALL 1,000 tokens (400 + 600);
    - May 15 14:00: 2 x BIG 2,500 tokens;
    - May 20 12:10 (today): 1 x SMALL 800 tokens, through the quota backend;
    - May 20 12:30 (this minute): 2 x SMALL 150 tokens, through the quota backend, after the fold.
    Period: 9,100 tokens in 8 requests; 1,100 over the 8,000 included = 110 cents; bill $11.10.
    Another team uses OTHER_MODEL with 777,777 tokens on the same days: none of it may show.
    """
    with time_machine.travel(T0, tick=False):
        user = tier_services.user_create(email="subscriber@example.com", password=PASSWORD)
        other = tier_services.user_create(email="other@example.com", password=PASSWORD)
    team, other_team = team_for_user(user=user), team_for_user(user=other)
    Subscription.objects.filter(team__in=[team, other_team]).update(tier=metered_tier(catalog))
    entitlements_cache_clear()

    usage_records_create(
        events=[
            event(team.pk, datetime(2026, 5, 3, 20, tzinfo=UTC), SMALL, 200, 300),
            *(event(team.pk, datetime(2026, 5, 10, 9, i, tzinfo=UTC), SMALL, 400, 600) for i in range(3)),
            *(event(team.pk, datetime(2026, 5, 15, 14, tzinfo=UTC), BIG, 1_000, 1_500) for _ in range(2)),
            event(other_team.pk, datetime(2026, 5, 10, 9, tzinfo=UTC), OTHER_MODEL, 377_777, 400_000),
        ]
    )
    with time_machine.travel(datetime(2026, 5, 20, 12, 10, tzinfo=UTC), tick=False):
        admit(team.pk, datetime(2026, 5, 20, 12, 10, tzinfo=UTC), SMALL, 300, 500)
        admit(other_team.pk, datetime(2026, 5, 20, 12, 10, tzinfo=UTC), OTHER_MODEL, 1, 2)
    usage_rollup_fold()
    # Not folded yet: the dashboard must still count them (usage_series reads the records above the cursor).
    with time_machine.travel(NOW, tick=False):
        for _ in range(2):
            admit(team.pk, NOW, SMALL, 50, 100)
    UsageAlert.objects.create(
        team=team, period_start=T0 + timedelta(days=16), kind="tokens_80",
        message="Your team has used 80% of its monthly tokens.", created_at=datetime(2026, 5, 15, 14, 5, tzinfo=UTC),
    )  # fmt: skip
    UsageAlert.objects.create(
        team=other_team, period_start=T0 + timedelta(days=16), kind="spend_cap",
        message="OTHER TEAM ALERT", created_at=datetime(2026, 5, 16, tzinfo=UTC),
    )  # fmt: skip
    return user, team, other_team


def page(user, path: str = "/dashboard/", **kwargs):
    client = Client()
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        return client.get(path, **kwargs)


def marks(html: str, figure_id: str) -> list[tuple[str, str, int]]:
    """(series, label, value) of every bar or point of one chart, in document order (series by series:
    each series' marks sit in a group that carries its name)."""
    figure = html.split(f'id="{figure_id}"', 1)[1].split("</figure>", 1)[0]
    found = []
    for name, group in re.findall(r'<g class="chart-series [^"]*" data-series="([^"]*)"[^>]*>(.*?)</g>', figure):
        for label, v in re.findall(r'class="chart-mark" data-label="([^"]*)" data-value="(-?\d+)"', group):
            found.append((unescape(name), unescape(label), int(v)))
    return found


def nonzero(found: list[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
    return {(s, label): v for s, label, v in found if v}


def gauge(html: str, key: str) -> dict[str, str]:
    tag = re.search(rf'<li class="gauge gauge-(\w+)" data-gauge="{key}"([^>]*)>', html)
    assert tag, key
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', tag.group(2)))
    return {"level": tag.group(1), **attrs}


@pytest.mark.django_db
def test_selector_figures_from_a_known_history(history):
    _, team, _ = history
    with time_machine.travel(NOW, tick=False):
        d = dashboard_for_team(team=team, now=NOW)
    assert d.subscription.tier.slug == "metered"
    assert (d.estimate.period_start, d.estimate.period_end) == (T0, datetime(2026, 6, 4, 8, tzinfo=UTC))
    assert d.days_left == 14  # Jun 4 08:00 - May 20 12:30 = 14 days 19.5 hours
    gauges = {g.key: (g.used, g.limit, g.percent, g.level) for g in d.gauges}
    assert gauges == {
        "requests_minute": (2, 10, 20, "ok"),
        "tokens_minute": (300, 5_000, 6, "ok"),
        "requests_day": (3, 100, 3, "ok"),
        "tokens_period": (9_100, 8_000, 113, "over"),
    }
    e = d.estimate
    assert (e.tokens_used, e.requests, e.overage_tokens) == (9_100, 8, 1_100)
    assert (e.fee_cents, e.overage_cents, e.estimated_total_cents, e.currency) == (1_000, 110, 1_110, "usd")
    assert (e.fee_state, e.due_so_far_cents, e.next_fee_cents, e.next_total_cents) == ("paid", 110, 1_000, 1_110)
    assert (e.next_invoice_at, e.next_period_start) == (e.period_end, e.period_end)

    # The period range: May 4 .. May 20, one label a day; models by tokens, largest first.
    assert (d.granularity, d.range_key) == ("day", "period")
    assert d.labels[0] == "May 4" and d.labels[-1] == "May 20" and len(d.labels) == 17
    assert d.models == [BIG, SMALL]
    by_label = {r.label: (r.requests, r.tokens) for r in d.rows_with_usage}
    assert by_label == {
        "May 10": ([0, 3], [0, 3_000]),
        "May 15": ([2, 0], [5_000, 0]),
        "May 20": ([0, 3], [0, 1_100]),
    }
    assert d.range_totals == (8, 9_100)
    assert [a.message for a in d.alerts] == ["Your team has used 80% of its monthly tokens."]


@pytest.mark.django_db
def test_page_shows_every_figure(history):
    user, _, _ = history
    response = page(user)
    assert response.status_code == 200
    html = response.content.decode()

    assert 'data-tier="metered"' in html
    assert 'id="days-left">14<' in html
    assert "May 4, 2026 \N{EN DASH} Jun 4, 2026" in html
    assert gauge(html, "requests_minute") == {"level": "ok", "used": "2", "limit": "10",
                                              "percent": "20"}  # fmt: skip
    assert gauge(html, "tokens_minute")["used"] == "300"
    assert gauge(html, "requests_day")["used"] == "3"
    assert gauge(html, "tokens_period") == {"level": "over", "used": "9100",
                                            "limit": "8000", "percent": "113"}  # fmt: skip
    assert '<span class="gauge-used">9,100</span> / <span class="gauge-limit">8,000</span>' in html
    # Past the included tokens of a tier that bills overage is a charge, not a refusal.
    assert '<strong class="gauge-over-note">the rest is billed as overage</strong>' in html
    assert "limit reached" not in html

    tokens = marks(html, "tokens-chart")
    assert len(tokens) == 2 * 17  # two models x every day of the range, zeros included
    assert nonzero(tokens) == {(SMALL, "May 10"): 3_000, (BIG, "May 15"): 5_000, (SMALL, "May 20"): 1_100}
    assert nonzero(marks(html, "requests-chart")) == {(SMALL, "May 10"): 3, (BIG, "May 15"): 2, (SMALL, "May 20"): 3}
    assert 'id="range-tokens" data-value="9100"' in html

    # The table fallback carries the same numbers (columns: BIG req, BIG tok, SMALL req, SMALL tok, totals).
    row = re.search(r'<tr data-label="May 10">(.*?)</tr>', html, re.S).group(1)
    assert re.findall(r'<td class="num"[^>]*>([\d,]+)</td>', row) == ["0", "0", "3", "3,000", "3", "3,000"]

    # This period so far: the fee was billed when the period began, the overage is still to bill.
    assert 'id="bill-fee" data-cents="0" data-state="paid">Paid' in html
    assert 'id="bill-overage" data-cents="110">$1.10<' in html
    assert 'id="bill-total" data-cents="110" data-currency="usd">$1.10' in html
    # The next invoice (Jun 4): the next period's fee and this period's overage.
    assert 'id="next-fee" data-cents="1000">$10.00<' in html
    assert 'id="next-invoice-total" data-cents="1110" data-currency="usd">$11.10' in html
    assert "1,100 tokens" in html  # the overage line names its tokens

    assert 'id="spend-cap-form"' in html and "csrfmiddlewaretoken" in html
    assert "Your team has used 80% of its monthly tokens." in html
    assert 'href="/billing/"' in html
    assert 'href="/keys/"' in html
    assert "/static/css/dashboard.css" in html


@pytest.mark.django_db
def test_another_teams_usage_never_shows(history):
    user, _, other_team = history
    html = page(user).content.decode()
    assert OTHER_MODEL not in html
    assert "777" not in html.replace("777777", "")  # neither the model nor its figures
    assert "777,777" not in html and "777777" not in html
    assert "OTHER TEAM ALERT" not in html
    # And the other team sees its own usage only.
    other_user = other_team.memberships.first().user
    other_html = page(other_user).content.decode()
    assert OTHER_MODEL in other_html and SMALL not in other_html.split('id="usage"')[1].split("</section>")[0]


@pytest.mark.django_db
def test_ranges(history):
    user, _, _ = history
    html = page(user, "/dashboard/?range=7d").content.decode()
    tokens = marks(html, "tokens-chart")
    labels = list(dict.fromkeys(label for _, label, _ in tokens))
    assert labels == [f"May {d}" for d in range(14, 21)]
    assert nonzero(tokens) == {(BIG, "May 15"): 5_000, (SMALL, "May 20"): 1_100}

    # 30 days reaches back before the period: the May 3 request shows in the chart (not in the bill).
    html = page(user, "/dashboard/?range=30d").content.decode()
    assert nonzero(marks(html, "tokens-chart"))[(SMALL, "May 3")] == 500
    assert 'id="next-invoice-total" data-cents="1110"' in html

    html = page(user, "/dashboard/?range=365d").content.decode()
    labels = list(dict.fromkeys(label for _, label, _ in marks(html, "tokens-chart")))
    assert len(labels) == 365 and labels[0] == "May 21" and labels[-1] == "May 20"


@pytest.mark.django_db
def test_invalid_range_falls_back_to_the_period_with_a_message(history):
    user, _, _ = history
    response = page(user, "/dashboard/?range=<script>")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Unknown range: showing this billing period instead." in html
    assert 'data-range="period"' in html
    assert "<script>" not in html.split('id="main"')[1]


@pytest.mark.django_db
def test_short_period_is_charted_by_the_hour(history):
    user, team, _ = history
    at = datetime(2026, 5, 5, 10, 0, tzinfo=UTC)  # 26 hours into the period
    with time_machine.travel(at, tick=False):
        admit(team.pk, at - timedelta(hours=1), BIG, 10, 20)
    client = Client()
    client.force_login(user)
    with time_machine.travel(at, tick=False):
        html = client.get("/dashboard/").content.decode()
    assert 'data-granularity="hour"' in html
    tokens = marks(html, "tokens-chart")
    labels = list(dict.fromkeys(label for _, label, _ in tokens))
    assert labels[0] == "May 4 08:00" and labels[-1] == "May 5 10:00" and len(labels) == 27
    assert nonzero(tokens) == {(BIG, "May 5 09:00"): 30}


@pytest.mark.django_db
def test_spend_cap_form_sets_and_removes_the_cap(history, django_capture_on_commit_callbacks):
    user, team, _ = history
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        html = client.get("/dashboard/").content.decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        assert client.post("/dashboard/", {"amount": "20.00", "mode": "hard"}).status_code == 403  # no CSRF token
        # After commit the service drops the cached entitlements, so the gauge shows the new allowance.
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/dashboard/", {"csrfmiddlewaretoken": token, "amount": "20.00", "mode": "hard"})
        assert response.status_code == 302
        subscription = Subscription.objects.get(team=team)
        assert (subscription.spend_cap_cents, subscription.spend_cap_hard) == (2_000, True)
        html = client.get(response["Location"]).content.decode()
    assert "Spend cap saved." in html
    # The capped allowance replaces the included tokens on the gauge: 8,000 + (2,000 - 1,000) / 0.1 cent.
    assert gauge(html, "tokens_period")["limit"] == "18000"
    assert gauge(html, "tokens_period")["percent"] == "50"
    assert 'data-cents="2000">$20.00<' in html

    with time_machine.travel(NOW, tick=False):
        client.post("/dashboard/", {"csrfmiddlewaretoken": token, "amount": "19.99", "mode": "notify"})
        assert Subscription.objects.get(team=team).spend_cap_cents == 1_999  # Decimal, not float, cents
        client.post("/dashboard/", {"csrfmiddlewaretoken": token, "amount": "", "mode": "hard"})
        html = client.get("/dashboard/").content.decode()
    assert Subscription.objects.get(team=team).spend_cap_cents is None
    assert "Spend cap removed." in html


@pytest.mark.django_db
def test_spend_cap_errors_are_form_errors(history):
    user, team, _ = history
    client = Client()
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        below = client.post("/dashboard/", {"amount": "5", "mode": "hard"})
        bad = client.post("/dashboard/", {"amount": "-3", "mode": "sideways"})
    assert below.status_code == 200
    assert "The spend cap must be at least the tier fee" in below.content.decode()
    assert 'aria-invalid="true"' in below.content.decode()
    assert bad.status_code == 200
    assert "Select a valid choice" in bad.content.decode()
    assert Subscription.objects.get(team=team).spend_cap_cents is None


@pytest.mark.django_db
def test_no_spend_cap_form_on_a_tier_without_overage(catalog):
    with time_machine.travel(NOW, tick=False):
        user = tier_services.user_create(email="free@example.com")
    html = page(user).content.decode()
    assert 'data-tier="free"' in html
    assert 'id="spend-cap-form"' not in html
    assert "does not bill overage" in html
    # Posting anyway is refused by the service, and the refusal is shown (as a message, as the form is absent).
    client = Client()
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        html = client.post("/dashboard/", {"amount": "50", "mode": "hard"}).content.decode()
    assert "does not bill overage" in html and "nothing to cap" in html
    assert Subscription.objects.get(team=team_for_user(user=user)).spend_cap_cents is None


@pytest.mark.django_db
def test_unlimited_limits_read_unlimited(catalog):
    with time_machine.travel(NOW, tick=False):
        user = tier_services.user_create(email="open@example.com")
    team = team_for_user(user=user)
    tier = Tier.objects.create(slug="open", name="Open", is_paid=False, price_cents=0, monthly_tokens=None)
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    html = page(user).content.decode()
    assert gauge(html, "requests_minute") == {"level": "ok", "used": "0", "limit": ""}
    assert html.count(">unlimited<") == 4
    assert "No data for this period" in html or 'id="usage-empty"' in html  # an empty chart or the empty state


@pytest.mark.django_db
def test_login_required(client):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_query_budget_is_independent_of_history_length(history, django_assert_max_num_queries):
    """A year of history costs no more queries than a day: everything comes from rollups in a fixed
    number of aggregate queries (session, user, team, subscription, period totals x2, entitlements,
    quota counters, series x2, alerts, plus the session save)."""
    user, _, _ = history
    client = Client()
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        client.get("/dashboard/")  # warm the per-process entitlements cache
        with django_assert_max_num_queries(10):
            assert client.get("/dashboard/?range=365d").status_code == 200
        with django_assert_max_num_queries(10):
            assert client.get("/dashboard/").status_code == 200


@pytest.mark.django_db
def test_model_names_are_escaped_everywhere(history):
    user, team, _ = history
    evil = '<img src=x onerror="alert(1)">'
    usage_records_create(events=[event(team.pk, datetime(2026, 5, 19, 9, tzinfo=UTC), evil, 1, 2)])
    html = page(user).content.decode()
    assert evil not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html  # chart marks, legend, table header
    assert nonzero(marks(html, "tokens-chart"))[(evil, "May 19")] == 3


@pytest.mark.django_db
def test_gauges_read_the_redis_backend_too(catalog, redis_server, monkeypatch):
    """Production counts in Redis: the page reads the same counters the Lua script admits with."""
    from tests.usage.test_quota_contract import redis_backend

    with time_machine.travel(T0, tick=False):
        user = tier_services.user_create(email="redis@example.com")
    team = team_for_user(user=user)
    Subscription.objects.filter(team=team).update(tier=metered_tier(catalog))
    entitlements_cache_clear()
    for backend in redis_backend(redis_server):
        monkeypatch.setattr("usage.quotas._backend", backend)
        with time_machine.travel(NOW, tick=False):
            admit(team.pk, NOW - timedelta(hours=2), SMALL, 100, 200)  # today, another minute
            for _ in range(2):
                admit(team.pk, NOW, SMALL, 50, 100)
            assert backend.drain_usage_stream() == 3
            gauges = {g.key: (g.used, g.limit) for g in dashboard_for_team(team=team, now=NOW).gauges}
        assert gauges == {
            "requests_minute": (2, 10),
            "tokens_minute": (300, 5_000),
            "requests_day": (3, 100),
            "tokens_period": (600, 8_000),
        }


@pytest.mark.django_db
def test_a_team_without_a_subscription_gets_a_pointer_to_pricing(catalog):
    with time_machine.travel(NOW, tick=False):
        user = tier_services.user_create(email="lapsed@example.com")
    Subscription.objects.filter(team=team_for_user(user=user)).update(status=Subscription.Status.CANCELED)
    entitlements_cache_clear()
    response = page(user, "/dashboard/?range=7d")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No subscription yet" in html and 'href="/pricing/"' in html
    assert 'id="gauges"' not in html and 'id="spend-cap-form"' not in html
