"""Create an API key for a user and print key and secret once (machine-readable lines)."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from exchange.errors import ExchangeError

from ...services import api_key_create

PERMISSIONS = {"read", "trade"}


class Command(BaseCommand):
    help = (
        "Create an API key. Prints API_KEY=... and API_SECRET=... once; the secret cannot be shown again. "
        "Example: create_api_key --user alice --permissions read,trade --ip 203.0.113.7,10.0.0.0/8"
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username of the key's owner")
        parser.add_argument("--permissions", default="read", help="comma-separated: read (always) and/or trade")
        parser.add_argument("--label", default="", help="a name for the key")
        parser.add_argument("--ip", default="", help="comma-separated IPs or CIDR networks; empty allows any")

    def handle(self, *args, **options):
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: options["user"]})
        except user_model.DoesNotExist as exc:
            raise CommandError(f"No user {options['user']!r}.") from exc
        permissions = {p.strip().lower() for p in options["permissions"].split(",") if p.strip()}
        unknown = permissions - PERMISSIONS
        if unknown:
            raise CommandError(f"Unknown permission(s): {', '.join(sorted(unknown))} (use read,trade).")
        try:
            api_key, secret = api_key_create(
                user=user, label=options["label"], can_trade="trade" in permissions, ip_allowlist=options["ip"]
            )
        except ExchangeError as exc:
            raise CommandError(exc.msg) from exc
        self.stdout.write(f"API_KEY={api_key.key}")
        self.stdout.write(f"API_SECRET={secret}")
        self.stdout.write(f"PERMISSIONS={','.join(api_key.permissions)}")
        self.stdout.write(f"IP_ALLOWLIST={','.join(api_key.ip_allowlist)}")
        self.stderr.write("Store the secret now: it is encrypted at rest and cannot be shown again.")
