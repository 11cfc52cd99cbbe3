"""`manage.py seed_demo [--if-empty]`: demo contracts, users, balances and the ops login."""
from django.conf import settings
from django.core.management.base import BaseCommand

from apps.ops.demo import OPS_USERNAME, database_is_empty, seed_demo


class Command(BaseCommand):
    help = "Seed demo assets, contracts, users with balances and a staff login (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="Do nothing when contracts already exist.")

    def handle(self, *args, if_empty=False, **options):
        if if_empty and not database_is_empty():
            self.stdout.write("Demo data already present; not seeding.")
            return
        result = seed_demo(credentials_file=settings.OPS_CREDENTIALS_FILE)
        self.stdout.write(self.style.SUCCESS(f"Seeded. New contracts: {', '.join(result.created_contracts) or 'none'}"))
        if result.ops_password:
            self.stdout.write(
                self.style.WARNING(
                    f"Ops login created — username: {OPS_USERNAME}  password: {result.ops_password}\n"
                    f"(also saved to {settings.OPS_CREDENTIALS_FILE}; change it in the admin)"
                )
            )
