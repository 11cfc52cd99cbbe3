"""A user's account as the client API and risk code see it: balances, positions, margins.

`account_overview` reads the user's ledger balances (wallet, order margin, isolated
margin per contract), their positions and the latest mark prices, and computes
everything from them with `risk.py`, in a constant number of queries.

Conventions (the reference exchange's): the cross wallet balance includes margin held
by open orders; the wallet balance adds isolated margins; available balance =
cross wallet + cross unrealized PnL − cross positions' initial margin − open-order
margin, i.e. the WALLET account plus cross uPnL minus cross initial margin. A RECEIVABLE
(what the user owes: a loss borrowed against their order margin) comes off both.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Max, Sum

from apps.contracts.models import Contract
from apps.ledger.models import Account, AccountKind, Asset, Balance
from apps.marketdata.selectors import price_latest_many
from apps.trading.models import OPEN_STATUSES, Order

from .models import MarginType, Position
from .risk import PositionRisk, liquidation_price, position_risk
from .tiers import contract_tiers

ZERO = Decimal(0)


@dataclass
class PositionView:
    position: Position
    contract: Contract
    mark: Decimal | None
    risk: PositionRisk | None
    isolated_margin: Decimal
    liquidation_price: Decimal = ZERO
    open_order_margin: Decimal = ZERO

    @property
    def is_isolated(self) -> bool:
        return self.position.margin_type == MarginType.ISOLATED


@dataclass
class AssetView:
    asset: Asset
    wallet: Decimal = ZERO  # the WALLET account: free cross collateral
    order_margin: Decimal = ZERO
    owed: Decimal = ZERO  # the RECEIVABLE account, negated: a loss borrowed against order margin
    isolated: Decimal = ZERO
    cross_unrealized: Decimal = ZERO
    isolated_unrealized: Decimal = ZERO
    cross_initial: Decimal = ZERO
    isolated_initial: Decimal = ZERO
    maintenance: Decimal = ZERO
    updated_at: datetime | None = None

    @property
    def cross_wallet(self) -> Decimal:
        return self.wallet + self.order_margin - self.owed

    @property
    def wallet_balance(self) -> Decimal:
        return self.cross_wallet + self.isolated

    @property
    def unrealized(self) -> Decimal:
        return self.cross_unrealized + self.isolated_unrealized

    @property
    def margin_balance(self) -> Decimal:
        return self.wallet_balance + self.unrealized

    @property
    def available(self) -> Decimal:
        return self.wallet - self.owed + self.cross_unrealized - self.cross_initial

    @property
    def max_withdraw(self) -> Decimal:
        return max(ZERO, min(self.wallet, self.available))


@dataclass
class AccountOverview:
    assets: dict[str, AssetView] = field(default_factory=dict)
    positions: list[PositionView] = field(default_factory=list)

    def asset(self, code: str) -> AssetView | None:
        return self.assets.get(code)


def account_overview(*, user) -> AccountOverview:
    overview = AccountOverview()
    # The user's accounts first, then their balances by the (account, asset) key: one index
    # path whatever the statistics say (a join on user_id could scan every balance per call).
    accounts = list(Account.objects.filter(user=user).values_list("id", flat=True))
    balances = (
        Balance.objects.filter(account_id__in=accounts)
        .values_list("account__kind", "account__contract_id", "asset_id", "amount", "updated_at")
    )
    assets = {a.pk: a for a in Asset.objects.all()}
    isolated_by_contract: dict[int, Decimal] = defaultdict(Decimal)
    for kind, contract_id, asset_id, amount, updated_at in balances:
        asset = assets[asset_id]
        view = overview.assets.setdefault(asset.code, AssetView(asset=asset))
        view.updated_at = max(filter(None, (view.updated_at, updated_at)), default=None)
        if kind == AccountKind.WALLET:
            view.wallet += amount
        elif kind == AccountKind.ORDER_MARGIN:
            view.order_margin += amount
        elif kind == AccountKind.RECEIVABLE:
            view.owed -= amount
        elif kind == AccountKind.ISOLATED_MARGIN:
            view.isolated += amount
            isolated_by_contract[contract_id] += amount

    positions = list(Position.objects.select_related("contract", "contract__settle_asset").filter(user=user))
    marks = price_latest_many(contracts=[p.contract for p in positions])
    held = dict(
        Order.objects.filter(user=user, status__in=OPEN_STATUSES).values("contract_id")
        .annotate(total=Sum("margin_held")).values_list("contract_id", "total")
    )
    for position in positions:
        c = position.contract
        snapshot = marks.get(c.symbol)
        mark = snapshot.mark_price if snapshot is not None else None
        price = mark if mark is not None else position.entry_price
        risk = position_risk(size=position.size, entry_price=position.entry_price, mark=price,
                             leverage=position.leverage, contract_size=c.contract_size, tiers=contract_tiers(c))
        view = PositionView(position=position, contract=c, mark=mark, risk=risk,
                            isolated_margin=isolated_by_contract.get(c.pk, ZERO),
                            open_order_margin=held.get(c.pk) or ZERO)
        overview.positions.append(view)
        asset = overview.assets.setdefault(c.settle_asset.code, AssetView(asset=c.settle_asset))
        asset.maintenance += risk.maintenance_margin
        if view.is_isolated:
            asset.isolated_unrealized += risk.unrealized_pnl
            asset.isolated_initial += risk.initial_margin
        else:
            asset.cross_unrealized += risk.unrealized_pnl
            asset.cross_initial += risk.initial_margin
    for view in overview.positions:  # needs every cross position's numbers first
        view.liquidation_price = _liquidation_price(view, overview)
    return overview


def _liquidation_price(view: PositionView, overview: AccountOverview) -> Decimal:
    position, risk = view.position, view.risk
    if position.size == 0 or risk is None or risk.tier is None:
        return ZERO
    if view.is_isolated:
        backing, others_mm, others_upnl = view.isolated_margin, ZERO, ZERO
    else:
        asset = overview.assets[view.contract.settle_asset.code]
        backing = asset.cross_wallet
        others = [v for v in overview.positions
                  if v is not view and not v.is_isolated and v.contract.settle_asset_id == view.contract.settle_asset_id]
        others_mm = sum((v.risk.maintenance_margin for v in others), ZERO)
        others_upnl = sum((v.risk.unrealized_pnl for v in others), ZERO)
    return liquidation_price(size=position.size, entry_price=position.entry_price,
                             contract_size=view.contract.contract_size, tier=risk.tier, backing=backing,
                             others_maintenance=others_mm, others_unrealized=others_upnl)


def positions_updated_at(*, user) -> datetime | None:
    return Position.objects.filter(user=user).aggregate(at=Max("updated_at"))["at"]
