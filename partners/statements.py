"""Monthly partner statements: what each hosting partner owes for a calendar month (UTC), issued once
per (partner, month) after the month ends, never changed afterwards; their CSV; the email.

A statement claims the partner's events that no statement has counted yet and that happened before
the month's end (``PartnerUsageEvent.statement`` IS NULL -> this statement), in the same transaction
that creates it. Events of the month itself become USAGE lines; events of earlier months, which
arrived after those months' statements were issued, become ADJUSTMENT lines for their own month
(``usage_month``), so a closed statement is never rewritten and nothing is counted twice or lost:
every event is claimed by exactly one statement, the first one issued after it arrived.

Lines group events by (kind, usage month, model, currency, share rate). The rate is the one in force
on the event's date (UTC): the PartnerShareRate with the greatest ``effective_from`` <= that date, or
none (0 bps) before the partner's first rate. A rate change in the middle of a month therefore splits
that month's lines at the change. ``share_cents = revenue_cents * share_bps / 10,000``, rounded half
up per line (half a cent is owed to TierLab; rounding per line, not per event, keeps the sum of the
lines equal to what each line states).

DIRECT lines report the traffic that the partner's channel sent straight to the model API (team API
keys issued for the partner: ``UsageRecord.partner_id``) in the month: requests and tokens, with
revenue and share 0, because TierLab bills those teams itself through their subscriptions; the line
is there so the partner sees the traffic attributed to it.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, date, datetime, time

from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, IntegerField, Min, Sum, Value, When
from django.db.models.functions import TruncMonth
from django.template.loader import render_to_string
from django.utils import timezone

from core.periods import add_months, month_first
from partners.models import Partner, PartnerShareRate, PartnerStatement, PartnerStatementLine, PartnerUsageEvent
from partners.services import PartnerError, share_rates_for
from usage.selectors import usage_totals_by_model_for_partner

logger = logging.getLogger(__name__)

DIRECT_CURRENCY = "usd"  # direct lines carry no money; the field needs a value
# A statement line's columns, as the admin shows them and the CSV exports them.
LINE_FIELDS = (
    "kind",
    "usage_month",
    "model",
    "currency",
    "share_bps",
    "events",
    "prompt_tokens",
    "completion_tokens",
    "revenue_cents",
    "share_cents",
)
CSV_COLUMNS = ("partner", "statement_month", *LINE_FIELDS)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def share_cents(*, revenue_cents: int, share_bps: int) -> int:
    """The share of ``revenue_cents`` at ``share_bps``, rounded half up (integers only, no floats)."""
    return (revenue_cents * share_bps + 5_000) // 10_000


# --- Issue ---------------------------------------------------------------------------------------------------


@transaction.atomic
def partner_statement_issue(*, partner: Partner, month: date, now: datetime | None = None) -> PartnerStatement:
    """The statement of ``partner`` for ``month`` (its first day), issued now if it does not exist yet.

    Idempotent: the unique (partner, month) constraint, and the partner row lock taken first, make a
    second or concurrent call return the statement the first one issued, unchanged. Refuses the
    current or a future month (it is not over), a month before the partner's first share rate (nothing
    is owed for it; the first statement claims earlier events as adjustments), and a month before the
    partner's latest statement (its events were claimed by that later statement already)."""
    now = now or timezone.now()
    month = month.replace(day=1)
    if month >= month_first(now):
        raise PartnerError(f"{month:%Y-%m} is not over yet: statements are issued after the month ends.")
    first_rate = PartnerShareRate.objects.filter(partner=partner).aggregate(first=Min("effective_from"))["first"]
    if first_rate is not None and month < month_first(first_rate):
        raise PartnerError(
            f"{month:%Y-%m} is before {partner}'s first share rate ({first_rate:%Y-%m-%d}): nothing is owed for it."
        )
    Partner.objects.select_for_update().filter(pk=partner.pk).first()  # serialise issues per partner
    existing = PartnerStatement.objects.filter(partner=partner, month=month).first()
    if existing is not None:
        return existing
    if PartnerStatement.objects.filter(partner=partner, month__gt=month).exists():
        raise PartnerError(f"{partner} already has a statement after {month:%Y-%m}; months are issued in order.")
    try:
        with transaction.atomic():
            statement = PartnerStatement.objects.create(partner=partner, month=month, issued_at=now)
    except IntegrityError:  # a concurrent issue won (SQLite has no row lock): return its statement
        return PartnerStatement.objects.get(partner=partner, month=month)

    end = _midnight(add_months(month, 1))
    # Claim first, then sum what was claimed: an event inserted between the two would otherwise be
    # marked as counted without being counted.
    PartnerUsageEvent.objects.filter(partner=partner, statement__isnull=True, occurred_at__lt=end).update(
        statement=statement
    )
    lines = _event_lines(statement=statement, partner_id=partner.pk) + _direct_lines(
        statement=statement, partner_id=partner.pk, start=_midnight(month), end=end
    )
    PartnerStatementLine.objects.bulk_create(lines)
    statement_id = statement.pk
    transaction.on_commit(lambda: partner_statement_email_send(statement_id=statement_id))
    return statement


def _event_lines(*, statement: PartnerStatement, partner_id: int) -> list[PartnerStatementLine]:
    rates = share_rates_for(partner_id=partner_id)
    # The rate in force per event, in SQL: the newest rate whose date the event is on or after.
    bps = Case(
        *(
            When(occurred_at__gte=_midnight(effective_from), then=Value(share))
            for effective_from, share in reversed(rates)
        ),
        default=Value(0),
        output_field=IntegerField(),
    )
    groups = (
        PartnerUsageEvent.objects.filter(statement=statement)
        .annotate(usage_month=TruncMonth("occurred_at", tzinfo=UTC), bps=bps)
        .values("usage_month", "model", "currency", "bps")
        .annotate(
            n=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            revenue=Sum("amount_cents"),
        )
        .order_by("usage_month", "model", "currency", "bps")
    )
    lines = []
    for group in groups:
        usage_month = month_first(group["usage_month"])
        kind = (
            PartnerStatementLine.Kind.USAGE if usage_month == statement.month else PartnerStatementLine.Kind.ADJUSTMENT
        )
        lines.append(
            PartnerStatementLine(
                statement=statement,
                kind=kind,
                usage_month=usage_month,
                model=group["model"],
                currency=group["currency"],
                share_bps=group["bps"],
                events=group["n"],
                prompt_tokens=group["prompt"],
                completion_tokens=group["completion"],
                revenue_cents=group["revenue"],
                share_cents=share_cents(revenue_cents=group["revenue"], share_bps=group["bps"]),
            )
        )
    # Usage lines first, then adjustments (oldest month first), as the statement reads.
    lines.sort(key=lambda line: (line.kind != PartnerStatementLine.Kind.USAGE, line.usage_month, line.model))
    return lines


def _direct_lines(
    *, statement: PartnerStatement, partner_id: int, start: datetime, end: datetime
) -> list[PartnerStatementLine]:
    groups = usage_totals_by_model_for_partner(partner_id=partner_id, start=start, end=end)
    return [
        PartnerStatementLine(
            statement=statement,
            kind=PartnerStatementLine.Kind.DIRECT,
            usage_month=statement.month,
            model=group["model"],
            currency=DIRECT_CURRENCY,
            share_bps=0,
            events=group["requests"],
            prompt_tokens=group["prompt_tokens"],
            completion_tokens=group["completion_tokens"],
        )
        for group in groups
    ]


def _months(first: date, last: date) -> list[date]:
    months = []
    while first <= last:
        months.append(first)
        first = add_months(first, 1)
    return months


def partner_statements_issue(*, now: datetime | None = None) -> int:
    """Issue every missing statement of every partner for the months that are over; returns how many
    were issued. Run by beat after month end (usage.tasks.partner_statements_issue); safe to run any
    number of times and concurrently (each issue is idempotent). A partner's months start at the
    earlier of the month it was created and the month of its first reported event, but never before
    the month of its first share rate.

    Also retries the email of statements whose email could not be sent before."""
    now = now or timezone.now()
    last = add_months(month_first(now), -1)
    first_events = dict(
        PartnerUsageEvent.objects.values("partner_id")
        .annotate(first=Min("occurred_at"))
        .values_list("partner_id", "first")
    )
    issued_months: dict[int, set[date]] = {}
    for partner_id, month in PartnerStatement.objects.values_list("partner_id", "month"):
        issued_months.setdefault(partner_id, set()).add(month)
    first_rates = dict(
        PartnerShareRate.objects.values("partner_id")
        .annotate(first=Min("effective_from"))
        .values_list("partner_id", "first")
    )
    issued = 0
    for partner in Partner.objects.all():
        starts = [month_first(partner.created_at)]
        if partner.pk in first_events:
            starts.append(month_first(first_events[partner.pk]))
        first = min(starts)
        if partner.pk in first_rates:
            # Never before the first share rate's month (defence in depth: the ingest refuses events
            # much older than that, which once meant one statement per month since year 1). Earlier
            # events are not lost: the first statement claims them as adjustment lines.
            first = max(first, month_first(first_rates[partner.pk]))
        done = issued_months.get(partner.pk, set())
        latest_done = max(done, default=None)
        for month in _months(first, last):
            if month in done or (latest_done is not None and month < latest_done):
                continue
            partner_statement_issue(partner=partner, month=month, now=now)
            issued += 1
    for statement_id in PartnerStatement.objects.filter(emailed_at__isnull=True).values_list("id", flat=True):
        partner_statement_email_send(statement_id=statement_id, now=now)
    return issued


# --- Read: totals and CSV ---------------------------------------------------------------------------------


def partner_statement_totals(*, statement: PartnerStatement) -> list[dict]:
    """Revenue and share per currency over the money lines (usage + adjustments)."""
    return list(
        statement.lines.exclude(kind=PartnerStatementLine.Kind.DIRECT)
        .values("currency")
        .annotate(revenue_cents=Sum("revenue_cents"), share_cents=Sum("share_cents"), events=Sum("events"))
        .order_by("currency")
    )


# A spreadsheet reads a cell starting with one of these as a formula (CSV injection): a partner
# reports the ``model`` text, so "=1+1+cmd|' /C calc'!A0" would run in an operator's spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """``value`` safe for a spreadsheet: text starting with a formula character gets a leading "'"
    (OWASP's CSV injection advice); numbers stay numbers (a negative amount is not a formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def partner_statement_csv(*, statement: PartnerStatement) -> str:
    """The statement as CSV: a header, then one row per line (amounts in integer cents). Text cells
    are escaped with ``csv_cell``."""
    out = io.StringIO()
    # RFC 4180 line ends: the writer then also quotes a cell holding a lone "\r" (with "\n" alone it
    # would not, and a model name with a carriage return would break the row in two).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in statement.lines.order_by("id"):
        row = [
            statement.partner.slug,
            f"{statement.month:%Y-%m}",
            line.kind,
            f"{line.usage_month:%Y-%m}",
            line.model,
            line.currency,
            line.share_bps,
            line.events,
            line.prompt_tokens,
            line.completion_tokens,
            line.revenue_cents,
            line.share_cents,
        ]
        writer.writerow([csv_cell(cell) for cell in row])
    return out.getvalue()


def partner_statement_filename(*, statement: PartnerStatement) -> str:
    return f"tierlab-statement-{statement.partner.slug}-{statement.month:%Y-%m}.csv"


# --- Email ---------------------------------------------------------------------------------------------------


def partner_statement_email_send(*, statement_id: int, now: datetime | None = None, force: bool = False) -> bool:
    """Email the statement (text + CSV attachment) to the partner's contact, after the issue committed.

    ``emailed_at`` is set once, by the first successful send; ``force`` (the admin's "email again")
    sends even if it was sent before and leaves ``emailed_at`` as it was. A failing mail server is
    logged, not raised: the statement stands, and the next beat pass (partner_statements_issue) tries
    again for every statement not yet emailed. So delivery is at least once: a crash between the send
    and the ``emailed_at`` write sends it again, which for a statement is better than never."""
    statement = PartnerStatement.objects.select_related("partner").get(pk=statement_id)
    if statement.emailed_at is not None and not force:
        return False
    context = {
        "statement": statement,
        "partner": statement.partner,
        "lines": list(statement.lines.order_by("id")),
        "totals": partner_statement_totals(statement=statement),
    }
    subject = render_to_string("partners/email/partner_statement_subject.txt", context).strip()
    body = render_to_string("partners/email/partner_statement.txt", context).strip() + "\n"
    message = EmailMessage(subject, body, None, [statement.partner.contact_email])
    message.attach(
        partner_statement_filename(statement=statement), partner_statement_csv(statement=statement), "text/csv"
    )
    try:
        message.send(fail_silently=False)
    except Exception:  # see the docstring: retried by the next pass
        logger.exception("partner statement %s could not be emailed", statement_id)
        return False
    PartnerStatement.objects.filter(pk=statement_id, emailed_at__isnull=True).update(emailed_at=now or timezone.now())
    return True
