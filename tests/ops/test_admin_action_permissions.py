"""Admin actions need their own permission, not just the view permission of the changelist.

For each action: a staff user who can only view the changelist is not offered the action,
and a forged POST (the action's name, with the adjustment form's apply=1) changes nothing;
with the action's custom permission added, the same POST does its work. A superuser keeps
every action. The action functions also refuse on their own (PermissionDenied) when called
without the permission.
"""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse

from apps.contracts.models import Contract, ContractStatus, ContractStatusChange, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import Account, LedgerTransaction, TransactionKind
from apps.ledger.selectors import balance_amount
from apps.marketdata.models import PriceSample
from apps.ops.demo import QUARTERLY_BRACKETS
from apps.ops.models import Alert, AlertLevel, AlertStatus, Backup, BackupStatus
from apps.settlement.models import DeliveryContract, DeliverySettlement, FundingRate, FundingSettlement, SettlementStatus
from exchange.redis import get_redis

D = Decimal
T8 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)  # a past funding time (8 h grid)

pytestmark = pytest.mark.django_db


def perm(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


@pytest.fixture
def staff(client, make_user):
    """staff("ledger.view_account", ...): a logged-in staff user holding exactly these permissions."""
    def make(*perms: str):
        user = make_user("staff-" + "-".join(p.split(".")[1] for p in perms) or "staff", is_staff=True)
        user.user_permissions.set([perm(p) for p in perms])
        client.force_login(user)
        return user

    return make


def grant(user, *perms: str) -> None:
    user.user_permissions.add(*[perm(p) for p in perms])


def offered(client, changelist: str) -> set[str]:
    """The action names in the changelist's action dropdown."""
    response = client.get(changelist)
    assert response.status_code == 200
    form = response.context["action_form"]
    return set() if form is None else {name for name, _ in form.fields["action"].choices if name}


def post_action(client, changelist: str, action: str, pks, **extra):
    """The POST the changelist's action form sends (with "index"), and the one the adjustment
    form's "apply" sends (without); both must be refused without the permission."""
    responses = []
    for index in ({"index": "0"}, {}):
        data = {"action": action, "_selected_action": list(pks), **index, **extra}
        responses.append(client.post(changelist, data, follow=True))
    return responses


# -- ledger: adjust_wallet ------------------------------------------------------------------------


ACCOUNTS = reverse("admin:ledger_account_changelist")
ADJUST = {"apply": "1", "direction": "credit", "amount": "1000000", "memo": "forged"}


def test_adjust_wallet_needs_ledger_adjust_wallet(client, staff, alice, usdt, wallet):
    account = wallet(alice)
    user = staff("ledger.view_account")
    assert "adjust_wallet" not in offered(client, ACCOUNTS)
    # The bug report's POST: action=adjust_wallet&apply=1&direction=credit&amount=1000000.
    for response in post_action(client, ACCOUNTS, "adjust_wallet", [account.pk], asset=usdt.pk, **ADJUST):
        assert response.status_code in (200, 403)
    assert balance_amount(account=account, asset_code="USDT") == 0
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.ADJUSTMENT).exists()

    # Even with change on accounts: money needs its own permission.
    grant(user, "ledger.change_account")
    assert "adjust_wallet" not in offered(client, ACCOUNTS)
    post_action(client, ACCOUNTS, "adjust_wallet", [account.pk], asset=usdt.pk, **ADJUST)
    assert balance_amount(account=account, asset_code="USDT") == 0

    grant(user, "ledger.adjust_wallet")
    assert "adjust_wallet" in offered(client, ACCOUNTS)
    # Without apply: the intermediate form is shown.
    form = client.post(ACCOUNTS, {"action": "adjust_wallet", "_selected_action": [account.pk], "index": "0"})
    assert form.status_code == 200 and b"Credit or debit wallets" in form.content
    client.post(ACCOUNTS, {"action": "adjust_wallet", "_selected_action": [account.pk], "asset": usdt.pk,
                           **ADJUST, "amount": "12.5", "memo": "goodwill"}, follow=True)
    assert balance_amount(account=account, asset_code="USDT") == D("12.5")
    txn = LedgerTransaction.objects.get(kind=TransactionKind.ADJUSTMENT)
    assert txn.created_by == user and txn.memo == "goodwill"


# -- contracts: halt / resume (contracts and the delivery calendar) -------------------------------


CONTRACTS = reverse("admin:contracts_contract_changelist")
CALENDAR = reverse("admin:settlement_deliverycontract_changelist")


def status_of(contract) -> str:
    return Contract.objects.get(pk=contract.pk).status


def test_halt_and_resume_need_contracts_halt_contract(client, staff, btcusdt):
    user = staff("contracts.view_contract")
    assert not {"halt", "resume"} & offered(client, CONTRACTS)
    post_action(client, CONTRACTS, "halt", [btcusdt.pk])
    assert status_of(btcusdt) == ContractStatus.TRADING
    assert not ContractStatusChange.objects.filter(contract=btcusdt).exists()

    grant(user, "contracts.halt_contract")
    assert {"halt", "resume"} <= offered(client, CONTRACTS)
    client.post(CONTRACTS, {"action": "halt", "_selected_action": [btcusdt.pk], "index": "0"})
    assert status_of(btcusdt) == ContractStatus.HALTED
    client.post(CONTRACTS, {"action": "resume", "_selected_action": [btcusdt.pk], "index": "0"})
    assert status_of(btcusdt) == ContractStatus.TRADING


def test_a_forged_resume_leaves_a_halted_contract_halted(client, staff, btcusdt):
    from apps.contracts.lifecycle import contract_halt

    contract_halt(contract=btcusdt, actor=None)
    staff("contracts.view_contract")
    post_action(client, CONTRACTS, "resume", [btcusdt.pk])
    assert status_of(btcusdt) == ContractStatus.HALTED


@pytest.fixture
def quarterly(usdt, btc):
    """A delivery contract whose onboard time has passed: "settle now" moves it to TRADING."""
    now = datetime.now(timezone.utc)
    delivery = (now + timedelta(days=60)).replace(hour=8, minute=0, second=0, microsecond=0)
    return contract_create(
        tiers=tiers_from_brackets(QUARTERLY_BRACKETS), symbol=f"BTCUSDT_{delivery:%y%m%d}",
        contract_type=ContractType.DELIVERY, status=ContractStatus.PENDING, base_asset=btc, quote_asset=usdt,
        settle_asset=usdt, max_leverage=25, delivery_time=delivery, onboard_time=now - timedelta(hours=1),
    )


def test_calendar_halt_and_resume_need_contracts_halt_contract(client, staff, quarterly):
    from apps.contracts.lifecycle import contract_status_set

    contract_status_set(contract=quarterly, to_status=ContractStatus.TRADING, at=datetime.now(timezone.utc),
                        reason="test", actor=None, expect=(ContractStatus.PENDING,))
    user = staff("settlement.view_deliverycontract")
    assert not {"halt", "resume", "settle_now"} & offered(client, CALENDAR)
    post_action(client, CALENDAR, "halt", [quarterly.pk])
    assert status_of(quarterly) == ContractStatus.TRADING

    grant(user, "contracts.halt_contract")
    assert offered(client, CALENDAR) == {"halt", "resume"}
    client.post(CALENDAR, {"action": "halt", "_selected_action": [quarterly.pk], "index": "0"})
    assert status_of(quarterly) == ContractStatus.HALTED


# -- settlement: delivery settle_now ----------------------------------------------------------------


def test_delivery_settle_now_needs_settlement_settle_delivery(client, staff, quarterly):
    user = staff("settlement.view_deliverycontract")
    post_action(client, CALENDAR, "settle_now", [quarterly.pk])
    assert status_of(quarterly) == ContractStatus.PENDING
    assert not ContractStatusChange.objects.filter(contract=quarterly).exists()
    assert not DeliverySettlement.objects.exists()

    # The halt permission does not settle.
    grant(user, "contracts.halt_contract")
    assert "settle_now" not in offered(client, CALENDAR)
    post_action(client, CALENDAR, "settle_now", [quarterly.pk])
    assert status_of(quarterly) == ContractStatus.PENDING

    grant(user, "settlement.settle_delivery")
    assert "settle_now" in offered(client, CALENDAR)
    page = client.post(CALENDAR, {"action": "settle_now", "_selected_action": [quarterly.pk], "index": "0"},
                       follow=True)
    assert status_of(quarterly) == ContractStatus.TRADING and b"TRADING" in page.content


# -- settlement: funding settle_now (the action and the add form) ----------------------------------


FUNDING = reverse("admin:settlement_fundingsettlement_changelist")
FUNDING_ADD = reverse("admin:settlement_fundingsettlement_add")


@pytest.fixture
def fundable(btcusdt):
    """The perpetual, trading since just before the past funding time T8, with a mark price then."""
    redis = get_redis()
    keys = list(redis.scan_iter(match="funding:*"))
    if keys:
        redis.delete(*keys)
    Contract.objects.filter(pk=btcusdt.pk).update(onboard_time=T8 - timedelta(hours=1))
    PriceSample.objects.create(contract=btcusdt, at=T8 - timedelta(seconds=1), index_price=D("50000"),
                               mark_price=D("50000"), basis=D(0))
    return btcusdt


@pytest.fixture
def pending_run(fundable):
    """An unsettled run for T8: settling it publishes the rate."""
    return FundingSettlement.objects.create(contract=fundable, funding_time=T8)


def run_status(run) -> str:
    return FundingSettlement.objects.get(pk=run.pk).status


def test_funding_settle_now_needs_settlement_settle_funding(client, staff, pending_run):
    user = staff("settlement.view_fundingsettlement")
    assert "settle_now" not in offered(client, FUNDING)
    post_action(client, FUNDING, "settle_now", [pending_run.pk])
    assert run_status(pending_run) == SettlementStatus.PENDING
    assert not FundingRate.objects.exists()

    grant(user, "settlement.settle_funding")
    assert "settle_now" in offered(client, FUNDING)
    client.post(FUNDING, {"action": "settle_now", "_selected_action": [pending_run.pk], "index": "0"})
    assert run_status(pending_run) == SettlementStatus.DONE
    assert FundingRate.objects.get().funding_time == T8


def test_adding_a_funding_run_needs_settlement_settle_funding(client, staff, fundable):
    """Adding a run is "settle now" for that time: the add permission alone is not enough."""
    user = staff("settlement.view_fundingsettlement", "settlement.add_fundingsettlement")
    form = {"contract": fundable.pk, "funding_time_0": f"{T8:%Y-%m-%d}", "funding_time_1": f"{T8:%H:%M:%S}"}
    assert client.get(FUNDING_ADD).status_code == 403
    assert client.post(FUNDING_ADD, form).status_code == 403
    assert not FundingSettlement.objects.exists() and not FundingRate.objects.exists()

    grant(user, "settlement.settle_funding")
    assert client.get(FUNDING_ADD).status_code == 200
    response = client.post(FUNDING_ADD, form, follow=True)
    # Settled, in its own durable transaction (not inside the change form's).
    assert response.status_code == 200 and b"settled: rate" in response.content
    assert FundingSettlement.objects.get(contract=fundable, funding_time=T8).status == SettlementStatus.DONE
    assert FundingRate.objects.get().funding_time == T8


# -- ops: alert acknowledge / resolve, backup verify_now ----------------------------------------------


ALERTS = reverse("admin:ops_alert_changelist")
BACKUPS = reverse("admin:ops_backup_changelist")


@pytest.fixture
def firing():
    now = datetime.now(timezone.utc)
    return Alert.objects.create(key="test.value", dedup_key="test.value", level=AlertLevel.CRITICAL,
                                status=AlertStatus.FIRING, message="on fire", first_seen=now, last_seen=now,
                                fired_at=now)


def test_alert_actions_need_ops_manage_alert(client, staff, firing):
    user = staff("ops.view_alert")
    assert not {"acknowledge", "resolve"} & offered(client, ALERTS)
    post_action(client, ALERTS, "acknowledge", [firing.pk])
    post_action(client, ALERTS, "resolve", [firing.pk])
    alert = Alert.objects.get(pk=firing.pk)
    assert (alert.status, alert.acknowledged_by, alert.acknowledged_at) == (AlertStatus.FIRING, None, None)

    grant(user, "ops.manage_alert")
    assert offered(client, ALERTS) == {"acknowledge", "resolve"}
    client.post(ALERTS, {"action": "acknowledge", "_selected_action": [firing.pk], "index": "0"})
    assert Alert.objects.get(pk=firing.pk).acknowledged_by == user
    client.post(ALERTS, {"action": "resolve", "_selected_action": [firing.pk], "index": "0"})
    assert Alert.objects.get(pk=firing.pk).status == AlertStatus.RESOLVED


def test_backup_verify_now_needs_ops_verify_backup(client, staff, monkeypatch):
    from apps.ops import tasks

    queued = []
    monkeypatch.setattr(tasks.backup_verify_task, "delay", lambda pk: queued.append(pk))
    backup = Backup.objects.create(database="exchange", status=BackupStatus.SUCCEEDED, started_at=datetime.now(timezone.utc))
    user = staff("ops.view_backup")
    assert "verify_now" not in offered(client, BACKUPS)
    post_action(client, BACKUPS, "verify_now", [backup.pk])
    assert queued == []

    grant(user, "ops.verify_backup")
    assert offered(client, BACKUPS) == {"verify_now"}
    client.post(BACKUPS, {"action": "verify_now", "_selected_action": [backup.pk], "index": "0"})
    assert queued == [backup.pk]


# -- every action: superusers keep it; the function itself refuses ---------------------------------


ACTIONS = [
    (Account, "adjust_wallet", "ledger.adjust_wallet"),
    (Contract, "halt", "contracts.halt_contract"),
    (Contract, "resume", "contracts.halt_contract"),
    (DeliveryContract, "halt", "contracts.halt_contract"),
    (DeliveryContract, "resume", "contracts.halt_contract"),
    (DeliveryContract, "settle_now", "settlement.settle_delivery"),
    (FundingSettlement, "settle_now", "settlement.settle_funding"),
    (Alert, "acknowledge", "ops.manage_alert"),
    (Alert, "resolve", "ops.manage_alert"),
    (Backup, "verify_now", "ops.verify_backup"),
]


def test_every_action_in_these_apps_has_a_custom_permission():
    """No action in ledger, contracts, settlement or ops is left to the view permission."""
    listed = {(model, name) for model, name, _ in ACTIONS}
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in ("ledger", "contracts", "settlement", "ops"):
            continue
        for name in model_admin.actions or ():
            func = getattr(model_admin, name)
            assert getattr(func, "allowed_permissions", None), f"{model.__name__}.{name} has no permissions"
            assert (model, name) in listed, f"{model.__name__}.{name} is not covered here"


@pytest.mark.parametrize("model, action, needed", ACTIONS, ids=lambda v: getattr(v, "__name__", v))
def test_the_action_needs_its_permission_superusers_keep_it(make_user, model, action, needed):
    model_admin = admin.site._registry[model]
    view = f"{model._meta.app_label}.view_{model._meta.model_name}"
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.set([perm(view)])
    holder = make_user("holder", is_staff=True)
    holder.user_permissions.set([perm(view), perm(needed)])
    superuser = make_user("root", is_staff=True, is_superuser=True)

    def request_of(user):
        request = RequestFactory().post("/admin/", {"apply": "1"})
        request.user = type(user).objects.get(pk=user.pk)  # no permission cache
        return request

    assert action not in model_admin.get_actions(request_of(viewer))
    assert action in model_admin.get_actions(request_of(holder))
    assert action in model_admin.get_actions(request_of(superuser))
    # Called directly (not through the changelist's filtering), the action still refuses.
    with pytest.raises(PermissionDenied):
        getattr(model_admin, action)(request_of(viewer), model.objects.none())
