from datetime import date

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.errors import ApplicationError
from partners import services as partners


class Command(BaseCommand):
    help = (
        "Create a hosting partner with its revenue share (basis points, effective from today or --share-from) "
        "and issue it "
        "a partner key for the usage-reporting API. If the slug exists, only a new key is issued (the share "
        "is left alone: change it in the admin). Prints the key alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--share-bps", type=int, required=True, help="Revenue share in basis points: 1500 = 15%%.")
        parser.add_argument(
            "--share-from",
            type=date.fromisoformat,
            default=None,
            metavar="YYYY-MM-DD",
            help="The day the share starts (default: today, UTC); usage reported before it has no share.",
        )
        parser.add_argument(
            "--contact-email",
            default=None,
            help="Where statements are emailed (default: partners+<slug>@tierlab.localhost).",
        )

    def handle(
        self,
        *args,
        slug: str,
        name: str,
        share_bps: int,
        contact_email: str | None,
        share_from: date | None = None,
        **options,
    ):
        try:
            partner = partners.partner_get(slug=slug)
            if partner is None:
                partner, secret = partners.partner_create(
                    slug=slug,
                    name=name,
                    share_bps=share_bps,
                    share_from=share_from,
                    contact_email=contact_email or f"partners+{slug}@tierlab.localhost",
                )
                self.stdout.write(
                    f"Created partner '{partner.name}' ({partner.slug}) with a {share_bps / 100:g}% share"
                    f" from {share_from or 'today (UTC)'}."
                )
            else:
                _, secret = partners.partner_key_create(partner=partner)
                self.stderr.write(f"Partner '{partner.slug}' exists: issued a new key; name and share left unchanged.")
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write("Partner key for POST /api/v1/partner/usage-events, shown once:")
        self.stdout.write(secret)
