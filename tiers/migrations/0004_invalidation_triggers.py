"""The invalidation feed's triggers (core/invalidation.py) on what a team's entitlements are made of.

A subscription created, deleted, or changed in its tier, status, anchor, past-due start or spend cap is
published with its team. Its stored period is not watched: the period close advances every paid
subscription's, and an entry holding the old one computes the same new period from the anchor
(core.periods.subscription_period_at), while a trial's end moves the anchor and the status, which are.
A tier, its models or a model changed: every team (tiers are few and rarely edited)."""

from django.db import migrations

from core.invalidation import invalidation_triggers


class Migration(migrations.Migration):
    dependencies = [
        ("tiers", "0003_close_fewer_indexes"),
        ("core", "0002_cache_invalidation"),
    ]

    operations = [
        invalidation_triggers(
            table="tiers_subscription",
            team_column="team_id",
            columns=(
                "team_id", "tier_id", "status", "billing_anchor", "past_due_since", "spend_cap_cents", "spend_cap_hard",
            ),
        ),  # fmt: skip
        invalidation_triggers(table="tiers_tier", team_column=None),
        invalidation_triggers(table="tiers_tier_allowed_models", team_column=None),
        invalidation_triggers(table="tiers_languagemodel", team_column=None),
    ]
