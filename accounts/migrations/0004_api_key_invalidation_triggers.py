"""The invalidation feed's triggers on API keys (core/invalidation.py): a key created, deleted, or
changed in what the model API caches of it (accounts.selectors.API_KEY_ROW_FIELDS and its prefix) is
published with its team; ``last_used_at`` is not."""

from django.db import migrations

from core.invalidation import invalidation_triggers


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_teams_roles_invitations"),
        ("core", "0002_cache_invalidation"),
    ]

    operations = [
        invalidation_triggers(
            table="accounts_apikey",
            team_column="team_id",
            columns=("team_id", "name", "prefix", "secret_hash", "created_by_id", "expires_at", "revoked_at", "scopes"),
        ),
    ]
