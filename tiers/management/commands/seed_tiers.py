from django.core.management.base import BaseCommand

from tiers import services


class Command(BaseCommand):
    help = "Create the seed model and tier catalog. Idempotent; never changes tiers that already exist."

    def handle(self, *args, **options):
        result = services.tier_catalog_seed()
        created = result.created_models + result.created_tiers
        if created:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created models: {', '.join(result.created_models) or 'none'}; "
                    f"tiers: {', '.join(result.created_tiers) or 'none'}."
                )
            )
        else:
            self.stdout.write("Catalog already seeded: nothing to do.")
