from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print where TierLab is served and how to log in (used by `make run`, through config/run.py)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, port: int, **options):
        base = f"http://127.0.0.1:{port}"
        localstripe = settings.TIERLAB_RUN_STARTS_LOCALSTRIPE
        # Only the console backend prints emails here (the embedded default); SMTP in production sends them.
        emails_here = settings.EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend"
        parts = "web, Celery worker, beat" + (", localstripe" if localstripe else "")
        lines = [
            "",
            f"TierLab is starting ({parts}). Ctrl-C stops everything.",
            f"  Site         {base}/",
            f"  Pricing      {base}/pricing/",
            f"  Sign up      {base}/accounts/signup/" + ("   (emails are printed below)" if emails_here else ""),
            f"  API keys     {base}/keys/",
            f"  API docs     {base}/api/docs/",
            f"  Admin        {base}/admin/",
            f"  Health       {base}/healthz",
        ]
        if localstripe:
            lines.append(f"  localstripe  {settings.STRIPE_API_BASE}   (fake Stripe; state in {settings.VAR_DIR})")
        elif settings.STRIPE_API_BASE:
            lines.append(f"  Stripe       {settings.STRIPE_API_BASE}")
        else:
            lines.append("  Stripe       api.stripe.com (the keys' mode: use sk_test_ keys for test mode)")
        if not settings.PRODUCTION:
            lines += [
                f"  Demo operator: {settings.TIERLAB_DEMO_OPERATOR_EMAIL} / {settings.TIERLAB_DEMO_OPERATOR_PASSWORD}",
            ]
        self.stdout.write("\n".join(lines) + "\n")
