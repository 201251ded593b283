from django.apps import AppConfig
from django.core import checks


class CoreConfig(AppConfig):
    """The shared kernel: imports no other TierLab app (tests/test_layers.py checks it)."""

    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from core.checks import production_settings_check, redis_persistence_deploy_check
        from core.sql import sqlite_version_check

        checks.register(sqlite_version_check)
        checks.register(production_settings_check, checks.Tags.security, deploy=True)
        checks.register(redis_persistence_deploy_check, "durability", deploy=True)
