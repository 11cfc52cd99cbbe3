"""`manage.py verify_backup <id>`: restore a backup into a scratch database and check it."""
from django.core.management.base import BaseCommand, CommandError

from apps.ops.backups import backup_verify
from apps.ops.models import Backup


class Command(BaseCommand):
    help = "Verify a backup: checksum, restore into <db>_verify_<id>, row counts, ledger totals, check_ledger."

    def add_arguments(self, parser):
        parser.add_argument("backup_id", type=int)

    def handle(self, *args, backup_id, **options):
        backup = Backup.objects.filter(pk=backup_id).first()
        if backup is None:
            raise CommandError(f"no backup #{backup_id}")
        backup_verify(backup=backup)
        if not backup.verified:
            raise CommandError(f"backup #{backup.pk} failed verification:\n{backup.verify_error}")
        self.stdout.write(self.style.SUCCESS(f"backup #{backup.pk} verified"))
