"""The invalidation feed's triggers on licence agreements (core/invalidation.py): the model API caches
each team's licence gate (partners.selectors.license_required_from), so an agreement created, deleted,
granted or moved is published with its team."""

from django.db import migrations

from core.invalidation import invalidation_triggers


class Migration(migrations.Migration):
    dependencies = [
        ("partners", "0001_initial"),
        ("core", "0002_cache_invalidation"),
    ]

    operations = [
        invalidation_triggers(
            table="partners_licenseagreement", team_column="team_id", columns=("team_id", "status", "required_from")
        ),
    ]
