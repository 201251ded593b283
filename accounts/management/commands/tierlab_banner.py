from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print where TierLab is served and how to log in (used by `make run`)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, port: int, **options):
        base = f"http://127.0.0.1:{port}"
        lines = [
            "",
            "TierLab is starting (web, Celery worker, beat). Ctrl-C stops everything.",
            f"  Site         {base}/",
            f"  Pricing      {base}/pricing/",
            f"  Sign up      {base}/accounts/signup/   (confirmation emails are printed below)",
            f"  Admin        {base}/admin/",
            f"  Health       {base}/healthz",
        ]
        if not settings.PRODUCTION:
            lines += [
                f"  Demo operator: {settings.TIERLAB_DEMO_OPERATOR_EMAIL} / {settings.TIERLAB_DEMO_OPERATOR_PASSWORD}",
            ]
        self.stdout.write("\n".join(lines) + "\n")
