"""`manage.py backup [--verify] [--retention]`: pg_dump the database into OPS_BACKUP_DIR."""
from django.core.management.base import BaseCommand, CommandError

from apps.ops.backups import backup_create, backup_retention_apply, backup_verify
from apps.ops.models import BackupStatus


class Command(BaseCommand):
    help = "Dump the configured PostgreSQL database (custom format) with checksum and row counts."

    def add_arguments(self, parser):
        parser.add_argument("--verify", action="store_true", help="Restore it into a scratch database and check it.")
        parser.add_argument("--retention", action="store_true", help="Then prune old backups (keep daily/weekly).")
        parser.add_argument("--dir", default=None, help="Directory for the dump (default OPS_BACKUP_DIR).")

    def handle(self, *args, verify=False, retention=False, dir=None, **options):
        backup = backup_create(directory=dir)
        if backup.status != BackupStatus.SUCCEEDED:
            raise CommandError(f"backup #{backup.pk} failed: {backup.error}")
        self.stdout.write(
            f"backup #{backup.pk}: {backup.path} ({backup.size_bytes} bytes, sha256 {backup.sha256})\n"
            f"rows: {', '.join(f'{t}={n}' for t, n in backup.row_counts.items())}"
        )
        if verify:
            backup_verify(backup=backup)
            if not backup.verified:
                raise CommandError(f"backup #{backup.pk} failed verification:\n{backup.verify_error}")
            self.stdout.write(self.style.SUCCESS(f"backup #{backup.pk} verified"))
        if retention:
            pruned = backup_retention_apply()
            self.stdout.write(f"retention pruned {len(pruned)} backup file(s)")
