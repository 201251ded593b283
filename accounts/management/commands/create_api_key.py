from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import services
from accounts.models import User
from accounts.selectors import team_for_user
from config.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Create an API key for the user with --email (creating the user, a personal team and a subscription "
        "to --tier, default free, if the user does not exist). Prints the secret alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--name", required=True, help="The key's name, e.g. the app that uses it.")
        parser.add_argument("--tier", default=None, help="Tier slug for a new user (default: free).")

    def handle(self, *args, email: str, name: str, tier: str | None, **options):
        try:
            with transaction.atomic():
                user = User.objects.filter(email__iexact=email).first()
                if user is None:
                    user = services.user_create(email=email, tier_slug=tier)
                    self.stdout.write(f"Created user {user.email} with a personal team on tier '{tier or 'free'}'.")
                elif tier:
                    self.stderr.write(f"User {user.email} exists: --tier is ignored (change tiers through billing).")
                team = team_for_user(user=user)
                if team is None:
                    team = services.account_setup_new_user(user=user, tier_slug=tier)
                key, secret = services.api_key_create(team=team, name=name)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"API key '{key.name}' ({key.prefix}…) for team '{team.name}'. The secret, shown once:")
        self.stdout.write(secret)
