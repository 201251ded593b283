from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import services
from accounts.models import User
from accounts.selectors import team_for_user
from core.errors import ApplicationError
from partners.services import partner_channel_key_create, partner_get
from tiers import services as tier_services


class Command(BaseCommand):
    help = (
        "Create an API key for the user with --email (creating the user, a personal team and a subscription "
        "to --tier, default free, if the user does not exist). Prints the secret alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--name", required=True, help="The key's name, e.g. the app that uses it.")
        parser.add_argument("--tier", default=None, help="Tier slug for a new user (default: free).")
        parser.add_argument(
            "--partner",
            default=None,
            help="Slug of the hosting partner whose channel the key is for (its traffic is attributed to them).",
        )
        parser.add_argument(
            "--scopes",
            default=None,
            help="Comma-separated scopes: model, read, manage (default: model,read).",
        )

    def handle(
        self,
        *args,
        email: str,
        name: str,
        tier: str | None,
        partner: str | None = None,
        scopes: str | None = None,
        **options,
    ):
        scope_list = [scope.strip() for scope in scopes.split(",") if scope.strip()] if scopes is not None else None
        if partner and scope_list is not None:
            raise CommandError("--scopes does not apply to a partner channel's key (it gets model and read).")
        channel = None
        if partner:
            channel = partner_get(slug=partner)
            if channel is None:
                raise CommandError(f"No partner with slug '{partner}' (create it with create_partner).")
        try:
            with transaction.atomic():
                user = User.objects.filter(email__iexact=email).first()
                if user is None:
                    user = tier_services.user_create(email=email, tier_slug=tier)
                    self.stdout.write(f"Created user {user.email} with a personal team on tier '{tier or 'free'}'.")
                elif tier:
                    self.stderr.write(f"User {user.email} exists: --tier is ignored (change tiers through billing).")
                team = team_for_user(user=user)
                if team is None:
                    team = tier_services.account_setup_new_user(user=user, tier_slug=tier)
                if channel is None:
                    # Made for the user: it acts with their role, and is revoked if they leave the team.
                    key, secret = services.api_key_create(team=team, name=name, scopes=scope_list, created_by=user)
                else:
                    key, secret = partner_channel_key_create(partner=channel, team=team, name=name)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        through = f" through partner '{channel.slug}'" if channel else ""
        self.stdout.write(
            f"API key '{key.name}' ({key.prefix}…) for team '{team.name}'{through}, scopes "
            f"{','.join(key.scopes)}. The secret, shown once:"
        )
        self.stdout.write(secret)
