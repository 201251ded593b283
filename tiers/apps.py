from django.apps import AppConfig


class TiersConfig(AppConfig):
    name = "tiers"
    verbose_name = "Tiers and subscriptions"

    def ready(self) -> None:
        # accounts (a lower app) makes teams; every new team starts on the free tier, which is tiers'.
        from accounts import extensions
        from tiers.services import team_set_up

        extensions.register(team_set_up=team_set_up)
