"""The income trigger probes the transactions its lines reference through the primary key.

Its check was `NOT EXISTS (transaction) OR NOT EXISTS (asset)` per distinct (transaction,
asset) of the new lines. Under the OR, PostgreSQL turns each NOT EXISTS into a hashed
subplan when it expects several probes: a hash of the whole transaction table, built from
an index or bitmap scan, which `enable_seqscan = off` (migration 0008) does not price out.
PL/pgSQL keeps that plan for the connection's life: the matcher's first income lines,
booked while the table was small, made every later batch read every ledger transaction
(1.1 ms per batch after 15 s of signed orders at 8 clients, growing with the ledger).
Now the distinct transaction and asset ids are gathered first, and each table is asked how
many of them it holds (`id = ANY(ids)`: index probes whatever the plan); only a refusal
looks for the offending pair, to name it in the message, which is unchanged.
"""
from importlib import import_module

from django.db import migrations

INCOME = """
CREATE OR REPLACE FUNCTION ledger_income_references() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    bad record;
    transactions bigint[];
    assets bigint[];
BEGIN
    SELECT array_agg(DISTINCT g.transaction_id), array_agg(DISTINCT g.asset_id) INTO transactions, assets
    FROM (SELECT DISTINCT n.transaction_id, n.asset_id FROM new_rows n) g;
    -- A NULL id is an element that matches nothing: refused, as before.
    IF (SELECT count(*) FROM ledger_ledgertransaction x WHERE x.id = ANY(transactions)) < cardinality(transactions)
       OR (SELECT count(*) FROM ledger_asset a WHERE a.id = ANY(assets)) < cardinality(assets) THEN
        SELECT g.transaction_id, g.asset_id INTO bad
        FROM (SELECT DISTINCT n.transaction_id, n.asset_id FROM new_rows n) g
        WHERE NOT EXISTS (SELECT 1 FROM ledger_ledgertransaction x WHERE x.id = g.transaction_id)
           OR NOT EXISTS (SELECT 1 FROM ledger_asset a WHERE a.id = g.asset_id)
        LIMIT 1;
        RAISE EXCEPTION 'income references unknown transaction % or asset %', bad.transaction_id, bad.asset_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF current_setting('ledger.income_users_from_positions', true) IS DISTINCT FROM 'on' THEN
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

# What migration 0011 left, for the way back.
_0011 = import_module("apps.ledger.migrations.0011_bulk_triggers_trust_settlement_statements")
INCOME_BEFORE = _0011.INCOME.replace(
    "{guard}", "current_setting('ledger.income_users_from_positions', true) IS DISTINCT FROM 'on'")


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0012_delivery_clearing_account'),
    ]

    operations = [migrations.RunSQL(INCOME, INCOME_BEFORE)]
