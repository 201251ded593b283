"""The run's catalog: the seed catalog (``tiers.services.tier_catalog_seed``), then the scenario's
tiers and model releases on top, and its dated tier changes on their day.

Tiers have no edit service: operators edit them in the admin, whose form validates the whole tier
(``full_clean``) and saves it. The simulator edits them the same way, so a scenario can set nothing
the admin would refuse. A price change reaches subscribers at their next period, as in the admin:
the period close prices each renewal at the tier's price then, and issued invoices never change.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from tiers.models import LanguageModel, Tier
from tiers.selectors import entitlements_cache_clear
from tiers.services import tier_catalog_seed

if TYPE_CHECKING:
    from simulation.scenario import Scenario, TierChange


def catalog_build(*, scenario: Scenario) -> dict[str, Tier]:
    """Seed the catalog and apply the scenario's tiers and models; returns the tiers by slug."""
    tier_catalog_seed()
    for release in scenario.models:
        model = LanguageModel(
            model_id=release.model_id, display_name=release.display_name, released_on=release.released_on
        )
        model.full_clean()
        model.save()
    models = {model.model_id: model for model in LanguageModel.objects.all()}
    tiers = {tier.slug: tier for tier in Tier.objects.all()}
    for slug, spec in scenario.tiers.items():
        tier = tiers.get(slug) or Tier(slug=slug)
        for name, value in spec.values.items():
            setattr(tier, name, value)
        tier.full_clean()
        tier.save()
        tier.allowed_models.set([models[model_id] for model_id in spec.models])
        tiers[slug] = tier
    for release in scenario.models:
        for slug in release.tiers:
            tiers[slug].allowed_models.add(models[release.model_id])
    entitlements_cache_clear()
    return tiers


def catalog_changes_apply(*, changes: tuple[TierChange, ...], day: dt.date, tiers: dict[str, Tier]) -> set[str]:
    """Apply the changes dated ``day`` (as an operator would in the admin that morning); returns the
    slugs of the tiers changed."""
    changed: set[str] = set()
    for change in changes:
        if change.date != day:
            continue
        tier = tiers[change.tier]
        for name, value in change.values.items():
            setattr(tier, name, value)
        tier.full_clean()
        tier.save()
        changed.add(tier.slug)
    if changed:
        entitlements_cache_clear()
    return changed
