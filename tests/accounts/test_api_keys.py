"""API keys: creation (command, services), encryption at rest, the user's page, the admin."""
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from apps.accounts import crypto
from apps.accounts.models import ApiKey
from apps.accounts.selectors import api_key_get_active
from apps.accounts.services import api_key_create, api_key_revoke
from exchange.errors import ExchangeError

REPO = Path(__file__).resolve().parents[2]


def run_command(*args) -> dict[str, str]:
    out = StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=StringIO())
    return dict(line.split("=", 1) for line in out.getvalue().splitlines())


def test_create_api_key_command_prints_key_and_secret_once(alice):
    lines = run_command("--user", "alice", "--permissions", "read,trade", "--label", "bot", "--ip", "1.2.3.4,10.0.0.0/8")
    assert len(lines["API_KEY"]) == 64 and len(lines["API_SECRET"]) == 64
    assert lines["PERMISSIONS"] == "read,trade"
    api_key = ApiKey.objects.get(key=lines["API_KEY"])
    assert api_key.user == alice and api_key.label == "bot" and api_key.can_trade
    assert api_key.ip_allowlist == ["1.2.3.4", "10.0.0.0/8"]
    assert crypto.decrypt_secret(api_key.secret_encrypted) == lines["API_SECRET"]


def test_create_api_key_command_defaults_to_read_only(alice):
    lines = run_command("--user", "alice")
    api_key = ApiKey.objects.get(key=lines["API_KEY"])
    assert not api_key.can_trade and api_key.ip_allowlist == [] and lines["PERMISSIONS"] == "read"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "nobody"], "No user"),
        (["--user", "alice", "--permissions", "read,withdraw"], "Unknown permission"),
        (["--user", "alice", "--ip", "1.2.3.999"], "Not an IP"),
    ],
)
def test_create_api_key_command_refuses_bad_input(alice, args, message):
    with pytest.raises(CommandError, match=message):
        run_command(*args)
    assert not ApiKey.objects.exists()


def test_secret_is_encrypted_at_rest(alice):
    api_key, secret = api_key_create(user=alice, label="x", can_trade=True, ip_allowlist=[])
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM accounts_apikey t WHERE id = %s", [api_key.pk])
        (row_text,) = cursor.fetchone()
    assert api_key.key in row_text
    assert secret not in row_text
    assert api_key_get_active(key=api_key.key).secret == secret.encode()


def test_keys_and_secrets_are_random_and_distinct(alice):
    made = [api_key_create(user=alice) for _ in range(5)]
    assert len({k.key for k, _ in made} | {s for _, s in made}) == 10
    assert all(k.key.isalnum() and s.isalnum() for k, s in made)


def test_key_rotation_decrypts_old_secrets(alice, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.API_KEY_ENCRYPTION_KEY = old
    api_key, secret = api_key_create(user=alice)
    settings.API_KEY_ENCRYPTION_KEY = f"{new},{old}"
    assert crypto.decrypt_secret(api_key.secret_encrypted) == secret
    settings.API_KEY_ENCRYPTION_KEY = new
    with pytest.raises(ImproperlyConfigured):
        crypto.decrypt_secret(api_key.secret_encrypted)


def test_ip_allowlist_is_validated_and_normalized(alice):
    api_key, _ = api_key_create(user=alice, ip_allowlist=" 10.1.2.3/8, 2001:db8::1 ,10.0.0.0/8")
    assert api_key.ip_allowlist == ["10.0.0.0/8", "2001:db8::1"]
    with pytest.raises(ExchangeError):
        api_key_create(user=alice, ip_allowlist=["example.com"])


def test_production_refuses_to_run_without_the_encryption_key(settings):
    settings.EXCHANGE_PRODUCTION = True
    settings.API_KEY_ENCRYPTION_KEY = ""
    with pytest.raises(ImproperlyConfigured):
        django_apps.get_app_config("accounts").ready()
    with pytest.raises(ImproperlyConfigured):
        crypto.encrypt_secret("x")


def test_production_settings_refuse_to_load_without_the_encryption_key():
    env = {
        **os.environ, "EXCHANGE_PRODUCTION": "1", "DEBUG": "0", "SECRET_KEY": "s" * 50, "API_KEY_ENCRYPTION_KEY": "",
    }
    code = "import exchange.settings.base"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "API_KEY_ENCRYPTION_KEY" in result.stderr
    env["API_KEY_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# The user's page -------------------------------------------------------------


def test_api_keys_page_needs_login(client, db):
    response = client.get("/account/api-keys/")
    assert response.status_code == 302 and "login" in response["Location"]


def test_api_keys_page_shows_only_the_users_own_keys(client, alice, bob):
    mine, _ = api_key_create(user=alice, label="alice-bot")
    theirs, _ = api_key_create(user=bob, label="bob-bot")
    client.force_login(alice)
    page = client.get(reverse("accounts:api_keys")).content.decode()
    assert mine.key in page and "alice-bot" in page
    assert theirs.key not in page and "bob-bot" not in page


def test_api_keys_page_creates_a_key_and_shows_the_secret_once(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("accounts:api_keys"), {"label": "grid", "can_trade": "on", "ip_allowlist": "192.0.2.0/24"}
    )
    assert response.status_code == 200
    api_key = ApiKey.objects.get(user=alice)
    secret = crypto.decrypt_secret(api_key.secret_encrypted)
    assert secret in response.content.decode()
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    assert api_key.can_trade and api_key.ip_allowlist == ["192.0.2.0/24"] and api_key.label == "grid"
    again = client.get(reverse("accounts:api_keys")).content.decode()
    assert api_key.key in again and secret not in again


def test_api_keys_page_rejects_a_bad_allowlist(client, alice):
    client.force_login(alice)
    response = client.post(reverse("accounts:api_keys"), {"label": "x", "ip_allowlist": "not-an-ip"})
    assert response.status_code == 200 and "Not an IP" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_user_revokes_own_key_but_not_anothers(client, alice, bob):
    mine, _ = api_key_create(user=alice)
    theirs, _ = api_key_create(user=bob)
    client.force_login(alice)
    response = client.post(reverse("accounts:api_key_revoke", args=[mine.pk]))
    assert response.status_code == 302
    assert client.post(reverse("accounts:api_key_revoke", args=[theirs.pk])).status_code == 404
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None
    assert api_key_get_active(key=mine.key) is None


# Admin ------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, make_user):
    client.force_login(make_user("opsadmin", is_staff=True, is_superuser=True))
    return client


def test_admin_lists_keys_without_secrets(staff_client, alice):
    api_key, secret = api_key_create(user=alice, label="listed")
    listing = staff_client.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    assert "listed" in listing and secret not in listing and api_key.secret_encrypted not in listing
    change = staff_client.get(reverse("admin:accounts_apikey_change", args=[api_key.pk])).content.decode()
    assert api_key.key in change and secret not in change and api_key.secret_encrypted not in change


def test_admin_creates_a_key_and_shows_the_secret_once(staff_client, alice):
    response = staff_client.post(
        reverse("admin:accounts_apikey_add"),
        {"user": alice.pk, "label": "from-admin", "can_trade": "on", "ip_allowlist": "198.51.100.0/24"},
        follow=True,
    )
    assert response.status_code == 200
    api_key = ApiKey.objects.get(label="from-admin")
    secret = crypto.decrypt_secret(api_key.secret_encrypted)
    assert secret in response.content.decode()
    assert api_key.can_trade and api_key.ip_allowlist == ["198.51.100.0/24"]
    assert secret not in staff_client.get(reverse("admin:accounts_apikey_changelist")).content.decode()


def test_admin_edits_permissions(staff_client, alice):
    api_key, _ = api_key_create(user=alice, can_trade=True)
    response = staff_client.post(
        reverse("admin:accounts_apikey_change", args=[api_key.pk]), {"label": "ro", "ip_allowlist": ""}
    )
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.label == "ro" and not api_key.can_trade
    assert not api_key_get_active(key=api_key.key).api_key.can_trade


def test_admin_revoke_action(staff_client, alice):
    first, _ = api_key_create(user=alice)
    second, _ = api_key_create(user=alice)
    response = staff_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [first.pk]},
        follow=True,
    )
    assert response.status_code == 200 and "Revoked 1 API key" in response.content.decode()
    assert ApiKey.objects.get(pk=first.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=second.pk).revoked_at is None


def test_revoke_is_idempotent(alice):
    api_key, _ = api_key_create(user=alice)
    api_key_revoke(api_key=api_key)
    first = api_key.revoked_at
    api_key_revoke(api_key=api_key)
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at == first
