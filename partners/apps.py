from django.apps import AppConfig


class PartnersConfig(AppConfig):
    name = "partners"
    verbose_name = "Partners and licences"

    def ready(self) -> None:
        # The model API (usage, a lower app) asks the apps above it through its extension points:
        # partners answers which channel partner a key belongs to and which releases need a licence.
        from partners import selectors
        from usage import extensions

        extensions.register(
            key_channel_partner=selectors.channel_partner_for_key,
            license_required_from=selectors.license_required_from,
            caller_columns=selectors.caller_columns,
        )
