from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tiers import services as tier_services


class Command(BaseCommand):
    help = "Create the demo operator account (embedded default only; refused in production mode)."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("Refusing to create a demo account with a known password in production mode.")
        email = settings.TIERLAB_DEMO_OPERATOR_EMAIL
        _, created = tier_services.operator_ensure(email=email, password=settings.TIERLAB_DEMO_OPERATOR_PASSWORD)
        self.stdout.write(f"Demo operator {email} {'created' if created else 'already exists'}.")
