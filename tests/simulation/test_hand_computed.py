"""A scenario small and regular enough to work out by hand, run through `manage.py simulate`: every
channel of every month must match to the cent.

The scenario (nothing random: no variation, probabilities 0) for January to March 2026:
- two teams on Plus ($20, trial switched off), 10 requests a day of 100 tokens: far inside Plus's
  limits. Each pays $20 at checkout on January 1st and renews on February 1st; Plus costs $30 from
  March 1st (a dated catalog change, made that morning), so the March 1st renewals are $30 each.
- one team on Pro ($200, no trial, 200M tokens included, overage 60 cents per million): 10,000
  requests a day of 1,000 tokens = 10M tokens a day, inside Pro's per-minute and daily limits. January
  uses 310M tokens: 110M over, 110 x 60 = 6,600 cents on the February 1st renewal; February 280M: 80M
  over, 4,800 cents on March 1st; March's overage is billed on April 1st, after the run.
- one team on Free (500 requests a day, 1M tokens a month), asking for 600 requests of 100 tokens a
  day: 500 admitted (50,000 tokens) and 100 refused for the daily limit (rate_limit_exceeded) until
  the 1M tokens are used, which takes 20 days; every request after that is refused for the quota
  (insufficient_quota). January: 20 x 100 = 2,000 rate-limited, 11 x 600 = 6,600 out of quota;
  February (28 days): 2,000 and 8 x 600 = 4,800; March: 2,000 and 6,600.
- a partner at 15% with two customers, each billed 1M tokens a day at $1 per million (100 cents an
  event); its share drops to 10% on March 1st: January 2 x 31 x 100 = 6,200 cents billed, 930 owed;
  February 5,600 and 840; March 6,200 and 620.
- a licensee with 800M monthly active users, reported for January on February 1st; a model released
  on February 15th checks January: over 700M, so a licence is required that day, requested the same
  day, granted three days later at $10,000 a month: 1,000,000 cents in February and in March.
MRR at the end of January and February: 2 x $20 + $200 = 24,000 cents; of March 2 x $30 + $200.
Subscribers at month end: free 2 (the team on Free and the licensee), plus 2, pro 1; teams 5.
Upgrades: the three checkouts in January.
"""

from __future__ import annotations

import json

from django.core.management import call_command

TINY = """
[scenario]
name = "tiny"
start = 2026-01-01
months = 3

[catalog.tiers.plus]
trial_days = 0
[catalog.tiers.pro]
trial_days = 0

[[catalog.changes]]
date = 2026-03-01
tier = "plus"
price_cents = 3_000

[[catalog.models]]
model_id = "Llama-5-Test"
released_on = 2026-02-15
tiers = ["pro"]

[[segments]]
name = "plus"
start_tier = "plus"
initial_teams = 2
[segments.traffic]
requests_per_day = 10
tokens_per_request = 100

[[segments]]
name = "pro"
start_tier = "pro"
initial_teams = 1
[segments.traffic]
requests_per_day = 10_000
tokens_per_request = 1_000

[[segments]]
name = "free"
initial_teams = 1
[segments.traffic]
requests_per_day = 600
tokens_per_request = 100

[[partners]]
slug = "hand"
name = "Hand Cloud"
share_bps = 1500
customers = 2
tokens_per_customer_per_day = 1_000_000
price_cents_per_million_tokens = 100
[[partners.share_changes]]
date = 2026-03-01
share_bps = 1000

[[licensees]]
name = "bigco"
mau_start = 800_000_000
request_after_days = 0
grant_after_days = 3
monthly_fee_cents = 1_000_000
"""


def _month(month, *, subscriptions, overage, partner_share, licences, upgrades, rate_limited, out_of_quota, mrr):
    revenue = {
        "subscriptions": subscriptions,
        "overage": overage,
        "partner_share": partner_share,
        "licences": licences,
        "refunds": 0,
    }
    return {
        "month": month,
        "revenue_cents": revenue,
        "total_cents": sum(revenue.values()),
        "mrr_cents": mrr,
        "teams": 5,
        "subscribers_by_tier": {"assistant": 0, "enterprise": 0, "free": 2, "plus": 2, "pro": 1},
        "upgrades": upgrades,
        "downgrades": 0,
        "churned": 0,
        "refusals": {
            "insufficient_quota": out_of_quota,
            "rate_limit_exceeded": rate_limited,
            "subscription_inactive": 0,
        },
        "payments_failed": 0,
        "recovered": 0,
    }


EXPECTED_MONTHS = [
    _month("2026-01", subscriptions=24_000, overage=0, partner_share=930, licences=0, upgrades=3,
           rate_limited=2_000, out_of_quota=6_600, mrr=24_000),
    _month("2026-02", subscriptions=24_000, overage=6_600, partner_share=840, licences=1_000_000, upgrades=0,
           rate_limited=2_000, out_of_quota=4_800, mrr=24_000),
    _month("2026-03", subscriptions=26_000, overage=4_800, partner_share=620, licences=1_000_000, upgrades=0,
           rate_limited=2_000, out_of_quota=6_600, mrr=26_000),
]  # fmt: skip


def test_the_tiny_scenario_matches_the_hand_computed_figures_to_the_cent(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "out"
    call_command("simulate", str(scenario), "--seed", "7", "--out", str(out), "--no-progress")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "tiny"
    assert summary["seed"] == 7
    for got, expected in zip(summary["months"], EXPECTED_MONTHS, strict=True):
        assert got["revenue_cents"] == expected["revenue_cents"], got["month"]  # channel by channel first
        assert got == expected, got["month"]
    assert summary["totals"] == {
        "revenue_cents": {
            "subscriptions": 74_000,
            "overage": 11_400,
            "partner_share": 2_390,
            "licences": 2_000_000,
            "refunds": 0,
        },
        "total_cents": 2_087_790,
    }
    csv_lines = (out / "monthly.csv").read_text().splitlines()
    assert csv_lines[0].startswith("month,subscriptions_cents,overage_cents,partner_share_cents,licences_cents")
    assert csv_lines[2].startswith("2026-02,24000,6600,840,1000000,0,1031440,24000,5,")
    assert (out / "report.html").exists()
