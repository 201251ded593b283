from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The shared kernel: imports no other TierLab app (tests/test_layers.py checks it)."""

    name = "core"
    verbose_name = "Core"
