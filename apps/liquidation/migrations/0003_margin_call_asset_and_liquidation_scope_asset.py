"""A margin call's scope and an active liquidation's scope are keyed by the settle asset too.

A user's cross account is one margin scope per settle asset (a USDT-settled and a
BTC-settled cross account are judged apart), but margin calls (the repeat-interval lookup)
and the one-active-liquidation constraint keyed a cross scope by (user, contract=NULL)
alone, so one asset's call or liquidation held up the other's.

- `Liquidation`: the unique constraint on ACTIVE rows becomes (user, asset, contract),
  nulls not distinct (the cross account's contract is NULL). Isolated scopes are unchanged
  in effect: their asset is the contract's settle asset. Only a relaxation: existing rows
  satisfy it.
- `MarginCall.asset` (the scope's settle asset) is added nullable here, backfilled, and made
  NOT NULL in 0004 (a separate migration: on PostgreSQL a table with the pending deferred
  foreign-key checks of the backfill's updates cannot be altered in the same transaction).

Backfill of existing margin calls, first rule that applies:
1. An isolated call (contract set): the contract's settle asset (exact).
2. A cross call (contract NULL): the settle asset of the contract named by the first
   position symbol of its payload (`payload["p"][0]["s"]`, the Binance MARGIN_CALL event).
   A cross call's payload lists the positions of that one cross account, all of them in
   its settle asset, and a call is only ever made for a scope with an open position, so
   this is exact unless the contract was since renamed.
3. Otherwise (payload without a known symbol): the USDT asset, the exchange's default
   margin asset, if it exists.
4. Otherwise the migration stops with an error rather than guess an asset: such a row
   cannot arise from the code that records calls (contracts are PROTECTed).
The old rows only matter for the repeat interval (300 s) and for display, so a rule-3
guess could at worst allow or hold back one repeat of a call within that interval.
"""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery
from django.db.models.fields.json import KT


def backfill_margin_call_asset(apps, schema_editor):
    MarginCall = apps.get_model("liquidation", "MarginCall")
    Contract = apps.get_model("contracts", "Contract")
    Asset = apps.get_model("ledger", "Asset")
    db = schema_editor.connection.alias
    calls = MarginCall.objects.using(db)
    contracts = Contract.objects.using(db)

    # 1. Isolated calls: the contract's settle asset.
    calls.filter(contract__isnull=False, asset__isnull=True).update(
        asset_id=Subquery(contracts.filter(pk=OuterRef("contract_id")).values("settle_asset_id")[:1]))

    # 2. Cross calls: the settle asset of the payload's first position symbol.
    cross = calls.filter(contract__isnull=True, asset__isnull=True).annotate(first_symbol=KT("payload__p__0__s"))
    symbols = [s for s in cross.values_list("first_symbol", flat=True).distinct() if s]
    settle = dict(contracts.filter(symbol__in=symbols).values_list("symbol", "settle_asset_id"))
    for symbol, asset_id in settle.items():
        cross.filter(first_symbol=symbol).update(asset_id=asset_id)

    # 3. What is left: USDT if there is such an asset; 4. else refuse to guess.
    left = calls.filter(asset__isnull=True)
    if left.exists():
        usdt = Asset.objects.using(db).filter(code="USDT").values_list("pk", flat=True).first()
        if usdt is None:
            raise RuntimeError(
                f"{left.count()} margin call(s) name no known contract and there is no USDT asset: "
                "set liquidation_margincall.asset_id for them by hand, then migrate again.")
        left.update(asset_id=usdt)


class Migration(migrations.Migration):

    dependencies = [
        ("contracts", "0006_funding_interval_divides_day"),
        ("ledger", "0008_triggers_plan_without_seqscans"),
        ("liquidation", "0002_adl"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="liquidation",
            name="liquidation_one_active_per_scope",
        ),
        migrations.AddConstraint(
            model_name="liquidation",
            constraint=models.UniqueConstraint(condition=models.Q(("status", "ACTIVE")),
                                               fields=("user", "asset", "contract"),
                                               name="liquidation_one_active_per_scope", nulls_distinct=False),
        ),
        migrations.RemoveIndex(
            model_name="margincall",
            name="margin_call_by_scope",
        ),
        migrations.AddField(
            model_name="margincall",
            name="asset",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                    to="ledger.asset"),
        ),
        migrations.AddIndex(
            model_name="margincall",
            index=models.Index(fields=["user", "asset", "contract", "-id"], name="margin_call_by_asset_scope"),
        ),
        # Last: no DDL on the table after the updates in this transaction.
        migrations.RunPython(backfill_margin_call_asset, migrations.RunPython.noop),
    ]
