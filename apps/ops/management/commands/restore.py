"""`manage.py restore <backup-id | path> --target-db NAME [--force]`: restore a dump and check it."""
from django.core.management.base import BaseCommand, CommandError

from apps.ops.backups import BackupError, backup_restore


class Command(BaseCommand):
    help = (
        "Restore a backup into a database, then compare row counts and ledger totals with the backup and "
        "run check_ledger there. Refuses the live database or an existing one without --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("reference", help="A backup id (see the admin) or the path of a .dump file.")
        parser.add_argument("--target-db", required=True, help="Database to restore into (created if missing).")
        parser.add_argument("--force", action="store_true", help="Replace an existing database, even the live one.")

    def handle(self, *args, reference, target_db, force=False, **options):
        try:
            result = backup_restore(reference=reference, target_db=target_db, force=force)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"restored {result.path} into {result.target}")
        self.stdout.write(f"rows: {', '.join(f'{t}={n}' for t, n in result.report.counts.items())}")
        self.stdout.write(result.report.ledger_output)
        if not result.report.ok:
            raise CommandError("restored, but the checks failed:\n" + "\n".join(result.report.errors))
        self.stdout.write(self.style.SUCCESS("restore checked: row counts, ledger totals and invariants agree"))
