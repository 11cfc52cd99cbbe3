"""`manage.py check_ledger`: verify every ledger and position invariant; exit 1 naming what broke."""
from django.core.management.base import BaseCommand, CommandError

from apps.ops.invariants import ALL_CHECKS, run_all_invariants


class Command(BaseCommand):
    help = "Verify the ledger and position invariants (design section 2); exits non-zero on a violation."

    def handle(self, *args, **options):
        violations = run_all_invariants()
        if violations:
            for violation in violations:
                self.stderr.write(f"BROKEN {violation}")
            raise CommandError(f"{len(violations)} invariant violation(s)")
        self.stdout.write(self.style.SUCCESS(f"ok: {len(ALL_CHECKS)} invariant checks passed"))
