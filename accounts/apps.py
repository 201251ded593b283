from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    # Not "Accounts": allauth's email-address app has that title in the admin too.
    verbose_name = "Users, teams and keys"
