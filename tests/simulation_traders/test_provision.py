"""Provisioning the demo participants (users, funded wallets, API keys) and the demo faucet."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.models import ApiKey
from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create
from apps.simulation.traders.provision import (
    KEY_LABEL,
    faucet_refill,
    loopback_allowlist,
    participant_specs,
    provision_participants,
)

D = Decimal


def wallet_of(name: str) -> Decimal:
    user = get_user_model().objects.get(username=name)
    return balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user), asset_code="USDT")


def test_specs_name_participants_by_role():
    assert participant_specs(makers=1, takers=2, trend=1) == [
        ("maker", "demo-maker-1", "m1"), ("taker", "demo-taker-1", "t1"), ("taker", "demo-taker-2", "t2"),
        ("trend", "demo-trend-1", "f1")]
    with pytest.raises(ValueError):
        participant_specs(makers=-1, takers=0, trend=0)


def test_loopback_exchanges_get_loopback_only_keys():
    assert loopback_allowlist("http://127.0.0.1:8000") == ["127.0.0.1", "::1"]
    assert loopback_allowlist("http://localhost:8000") == ["127.0.0.1", "::1"]
    assert loopback_allowlist("https://exchange.example.com") == []


def test_provisioning_twice_funds_once_and_leaves_one_active_key_per_user(usdt):
    specs = participant_specs(makers=1, takers=0, trend=1)
    first = provision_participants(specs=specs, base_url="http://127.0.0.1:8000")
    second = provision_participants(specs=specs, base_url="http://127.0.0.1:8000")
    assert [c.name for c in second] == ["demo-maker-1", "demo-trend-1"]
    assert [c.user_id for c in first] == [c.user_id for c in second]
    assert wallet_of("demo-maker-1") == D("1000000") and wallet_of("demo-trend-1") == D("2000")
    for old, new in zip(first, second, strict=True):
        assert old.api_key != new.api_key and old.secret != new.secret
        active = ApiKey.objects.filter(user_id=new.user_id, label=KEY_LABEL, revoked_at__isnull=True)
        assert [k.key for k in active] == [new.api_key]
        assert active[0].can_trade and active[0].ip_allowlist == ["127.0.0.1", "::1"]
        assert ApiKey.objects.get(key=old.api_key).revoked_at is not None
    assert "secret" not in repr(second[0])
    assert not get_user_model().objects.get(username="demo-maker-1").has_usable_password()


def test_faucet_tops_a_wallet_back_up_and_only_when_below(usdt):
    provision_participants(specs=participant_specs(makers=0, takers=0, trend=1), base_url="http://127.0.0.1:1")
    assert faucet_refill(name="demo-trend-1", up_to=D("2000")) is None
    assert faucet_refill(name="demo-trend-1", up_to=D("2500.5")) == D("500.5")
    assert wallet_of("demo-trend-1") == D("2500.5")


@pytest.mark.django_db(transaction=True)
def test_two_refills_at_once_top_up_once(usdt):
    """The second refill waits for the first's wallet lock, then finds nothing missing."""
    import threading

    from django.db import connection

    provision_participants(specs=participant_specs(makers=0, takers=0, trend=1), base_url="http://127.0.0.1:1")
    barrier = threading.Barrier(2)
    results = []

    def refill():
        try:
            barrier.wait()
            results.append(faucet_refill(name="demo-trend-1", up_to=D("3000")))
        finally:
            connection.close()

    threads = [threading.Thread(target=refill) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=str) == [D("1000"), None]
    assert wallet_of("demo-trend-1") == D("3000")
