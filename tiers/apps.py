from django.apps import AppConfig


class TiersConfig(AppConfig):
    name = "tiers"
    verbose_name = "Tiers and subscriptions"

    def ready(self) -> None:
        # accounts (a lower app) makes teams; every new team starts on the free tier, which is tiers'.
        # accounts creates API keys; whether a team's tier includes API access is tiers' to say.
        from accounts import extensions
        from tiers.selectors import team_api_access_refusal
        from tiers.services import team_set_up

        extensions.register(team_set_up=team_set_up, api_access_refusal=team_api_access_refusal)
