"""The bulk tables' statement triggers trust what a settlement's statements guarantee by construction.

`ledger_post_staged` writes its entries from the RETURNING of the UPDATE of the balances
they move (STAGED_MOVE_SQL): each entry exists because its balance row does. The check
that every new entry's (account, asset) has a balance row probed the balance index once
per entry: ~1.1 s of a funding settlement of a million positions. The staged move says
so with a transaction-local setting (`ledger.entries_from_balances`) for that one
statement; every other writer of entries is still checked. The zero-sum check per
transaction and asset runs for every statement, as before.

Likewise a funding's or a delivery's income lines take their users from positions, whose
foreign key guarantees them: those statements set `ledger.income_users_from_positions`,
and the income trigger skips its probe of auth_user per line (~0.7 s for a million).
"""
from django.db import migrations

ENTRIES = """
CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT g.transaction_id, g.asset_id, g.total, x.id IS NULL AS unknown INTO bad
    FROM (SELECT n.transaction_id, n.asset_id, SUM(n.amount) AS total
          FROM new_entries n GROUP BY n.transaction_id, n.asset_id) g
    LEFT JOIN ledger_ledgertransaction x ON x.id = g.transaction_id
    WHERE g.total <> 0 OR x.id IS NULL
    LIMIT 1;
    IF FOUND AND bad.unknown THEN
        RAISE EXCEPTION 'ledger entries reference unknown transaction %', bad.transaction_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance for asset %: legs sum to %',
            bad.transaction_id, bad.asset_id, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    IF {guard} THEN
        SELECT n.account_id, n.asset_id INTO bad
        FROM new_entries n
        WHERE NOT EXISTS (SELECT 1 FROM ledger_balance b WHERE b.account_id = n.account_id AND b.asset_id = n.asset_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger entry of account % asset % has no balance row (unknown account or asset)',
                bad.account_id, bad.asset_id USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
"""


INCOME = """
CREATE OR REPLACE FUNCTION ledger_income_references() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT g.transaction_id, g.asset_id INTO bad
    FROM (SELECT DISTINCT n.transaction_id, n.asset_id FROM new_rows n) g
    WHERE NOT EXISTS (SELECT 1 FROM ledger_ledgertransaction x WHERE x.id = g.transaction_id)
       OR NOT EXISTS (SELECT 1 FROM ledger_asset a WHERE a.id = g.asset_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'income references unknown transaction % or asset %', bad.transaction_id, bad.asset_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF {guard} THEN
        SELECT n.user_id INTO bad
        FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = n.user_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'income references unknown user %', bad.user_id USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0010_receivable_account'),
    ]

    operations = [
        migrations.RunSQL(
            ENTRIES.replace("{guard}", "current_setting('ledger.entries_from_balances', true) IS DISTINCT FROM 'on'"),
            ENTRIES.replace("{guard}", "true"),
        ),
        migrations.RunSQL(
            INCOME.replace("{guard}",
                           "current_setting('ledger.income_users_from_positions', true) IS DISTINCT FROM 'on'"),
            INCOME.replace("{guard}", "true"),
        ),
    ]
