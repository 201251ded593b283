from django.apps import AppConfig


class TiersConfig(AppConfig):
    name = "tiers"
    verbose_name = "Tiers and billing"

    def ready(self) -> None:
        # Celery autodiscovers only tiers/tasks.py; the webhook inbox's tasks live apart.
        from tiers import tasks_webhooks  # noqa: F401
