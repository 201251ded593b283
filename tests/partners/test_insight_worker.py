"""The periodic jobs of insight, partners and licences, run by a real beat and worker.

The unit tests call the services directly; this shows that beat sends each scheduled task by its
registered name and the worker runs it against the database: usage records become rollups and a quota
alert (emailed once), a closed month gets its partner statement, and the model release dates get
their licence checks.
"""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.selectors import team_for_user
from partners.models import LicenseCheckRun, PartnerStatement
from partners.services import partner_create, partner_usage_events_ingest
from tests.helpers_celery import celery_worker_and_beat
from tiers import services as tier_services
from tiers.selectors import subscription_current
from usage.models import UsageAlert, UsageRollup
from usage.quotas.base import UsageEvent
from usage.services import usage_records_create

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SCHEDULED = ("usage-rollup", "usage-alerts", "partner-statements", "license-checks")


def _schedule_every_second(*names: str) -> None:
    """Each of the settings' beat entries ``names`` as an extra PeriodicTask sent every second (beat
    rewrites the settings' own entries from the settings when it starts)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    for name in names:
        PeriodicTask.objects.update_or_create(
            name=f"{name} (test: every second)",
            defaults={"task": settings.CELERY_BEAT_SCHEDULE[name]["task"], "interval": every_second, "enabled": True},
        )


def test_beat_and_worker_run_rollups_alerts_statements_and_licence_checks(tmp_path, catalog):
    now = timezone.now()
    user = tier_services.user_create(email="busy@example.com")
    team = team_for_user(user=user)
    subscription = subscription_current(team=team)
    quota = subscription.tier.monthly_tokens
    assert quota, "the free tier has a monthly token quota"
    # 85% of the quota, in this period: the 80% alert is due, the 100% one is not.
    used = quota * 85 // 100
    created = max(subscription.current_period_start, now - timedelta(minutes=5))
    events = [
        UsageEvent(
            request_id=f"w{i}", team_id=team.pk, api_key_id=None, model="Llama-3.3-8B-Instruct",
            prompt_tokens=used // 5, completion_tokens=0, created_at=created,
        )
        for i in range(5)
    ]  # fmt: skip
    assert usage_records_create(events=events) == 5
    used = used // 5 * 5

    # A partner event last month: that month is closed, so its statement is due.
    partner, _ = partner_create(
        slug="cloudy", name="Cloudy", share_bps=1000, contact_email="partner@example.com",
        now=now - timedelta(days=70),
    )  # fmt: skip
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(day=10, hour=12, tzinfo=UTC)
    event = {
        "event_id": "e1", "customer": "c1", "model": "Llama-3.3-70B-Instruct", "prompt_tokens": 10,
        "completion_tokens": 5, "amount_cents": 300, "currency": "usd", "time": last_month.isoformat(),
    }  # fmt: skip
    result = partner_usage_events_ingest(partner_id=partner.pk, events=[event], now=now)
    assert result.accepted == 1

    _schedule_every_second(*SCHEDULED)
    with celery_worker_and_beat(tmp_path / "celery") as celery:
        rolled = celery.wait_for(
            "the records folded into rollups",
            lambda: (
                (
                    total := sum(
                        UsageRollup.objects.filter(team=team, granularity="day").values_list("total_tokens", flat=True)
                    )
                )
                == used
                and total
            ),
        )
        alert = celery.wait_for(
            "the 80% alert, emailed",
            lambda: UsageAlert.objects.filter(team=team, kind="tokens_80", emailed_at__isnull=False).first(),
        )
        statement = celery.wait_for(
            "last month's partner statement",
            lambda: PartnerStatement.objects.filter(partner=partner, month=last_month.date().replace(day=1)).first(),
        )
        checks = celery.wait_for("the licence checks", lambda: LicenseCheckRun.objects.count() or None)
        logs = celery.logs()
    assert [p.name for p in celery.processes if p.killed] == [], "worker/beat ignored TERM\n" + logs

    assert rolled == used
    assert sum(UsageRollup.objects.filter(team=team, granularity="hour").values_list("total_tokens", flat=True)) == used
    assert UsageAlert.objects.filter(team=team).values_list("kind", flat=True).get() == "tokens_80"
    assert alert.period_start == subscription.current_period_start
    assert statement.lines.get(kind="usage").share_cents == 30  # 10% of 300 cents
    assert checks >= 1
    for task in (
        "usage.tasks.usage_rollup_fold",
        "usage.tasks.usage_alerts_evaluate",
        "partners.tasks.partner_statements_issue",
        "partners.tasks.license_checks_run",
    ):
        assert task in logs, f"{task} never ran\n{logs}"
    assert "Traceback" not in logs, logs
