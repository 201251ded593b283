"""`manage.py run_billing [--now ISO]`: one billing/dunning pass, for operators and tests."""

from __future__ import annotations

from datetime import UTC, datetime, time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from billing.run import billing_run


def parse_now(value: str) -> datetime:
    """An ISO 8601 date-time ("2026-03-01T00:00:00Z", "2026-03-01 12:30+02:00") or date ("2026-03-01",
    midnight). Without an offset it is UTC, the billing clock's zone, not the server's."""
    text = value.strip()
    try:
        parsed = parse_datetime(text)
        if parsed is None:
            day = parse_date(text)
            parsed = datetime.combine(day, time.min) if day is not None else None
    except ValueError as exc:  # well-formed but impossible, e.g. 2026-02-30
        raise CommandError(f"--now {value!r} is not a valid date-time: {exc}.") from exc
    if parsed is None:
        raise CommandError(
            f"--now {value!r} is not an ISO 8601 date-time; use e.g. 2026-03-01T00:00:00Z or 2026-03-01."
        )
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class Command(BaseCommand):
    help = (
        "Run one billing pass: close the periods that ended (renewal invoices, scheduled downgrades and "
        "cancels, trial ends), charge the invoices that are due (first attempts and dunning retries), and "
        "end dunning for those out of retries. Safe to run at any time, also twice at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--now",
            help="Run the pass as if it were this time (ISO 8601, UTC unless an offset is given). Default: now.",
        )
        parser.add_argument(
            "--payment-concurrency",
            type=int,
            default=settings.TIERLAB_PAYMENT_CONCURRENCY,
            help="Invoices charged at once (default: TIERLAB_PAYMENT_CONCURRENCY, %(default)s; PostgreSQL only).",
        )
        parser.add_argument(
            "--close-concurrency",
            type=int,
            default=settings.TIERLAB_CLOSE_CONCURRENCY,
            help="Batches of the period close closed at once (default: TIERLAB_CLOSE_CONCURRENCY, %(default)s; "
            "PostgreSQL only).",
        )

    def handle(self, *args, **options) -> None:
        now = parse_now(options["now"]) if options.get("now") else timezone.now()
        if options["payment_concurrency"] < 1:
            raise CommandError("--payment-concurrency must be 1 or more.")
        if options["close_concurrency"] < 1:
            raise CommandError("--close-concurrency must be 1 or more.")
        result = billing_run(
            now=now,
            payment_concurrency=options["payment_concurrency"],
            close_concurrency=options["close_concurrency"],
        )
        self.stdout.write(
            f"Billing pass at {now.isoformat()}: {result.periods_closed} period(s) closed, "
            f"{result.invoices_created} invoice(s) issued, {result.changes_applied} scheduled change(s) applied; "
            f"{result.payments_attempted} charge(s) attempted, {result.payments_succeeded} succeeded, "
            f"{result.payments_failed} failed; {result.downgraded} team(s) downgraded after dunning."
        )
        if result.errors:
            for error in result.errors:
                self.stderr.write(f"  {error}")
            # Non-zero exit: what failed is still due, and the next pass completes it.
            raise CommandError(f"{len(result.errors)} error(s) in this pass; the next pass retries them.")
