"""A dedicated database per simulation: created fresh, migrated, and made current.

A scenario or soak run must start from an empty exchange (so the same seed gives the
same run) and must never touch the exchange's own data, so the command points this
process's default connection at a database of its own (`<configured database>_sim_<scenario>`
unless told otherwise: environments sharing a server never drop each other's) before anything reads it: drop it if it exists, create it on the same
PostgreSQL server, run every migration. Process caches keyed by primary key
(contracts, tiers, accounts) are emptied, since ids repeat across databases.
"""
import re

import psycopg
from django.core.management import call_command
from django.db import connections

NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def database_name_for(label: str) -> str:
    """`<configured database>_sim_<label>`: two environments on one server (two checkouts, CI
    and a developer) each drop and recreate only their own simulation database."""
    configured = connections["default"].settings_dict["NAME"]
    name = f"{configured}_sim_{label}".lower().replace("-", "_")
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable database name")
    return name


def _admin_conninfo(settings_dict: dict) -> dict:
    return {
        "host": settings_dict.get("HOST") or "127.0.0.1",
        "port": settings_dict.get("PORT") or 5432,
        "user": settings_dict.get("USER") or "postgres",
        "password": settings_dict.get("PASSWORD") or None,
        "dbname": "postgres",
    }


def database_recreate_and_use(name: str, *, verbosity: int = 0) -> None:
    """Drop and create database `name` next to the configured one, migrate it, make it the default."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable database name (lower case letters, digits, _)")
    default = connections["default"]
    if name == default.settings_dict["NAME"]:
        raise ValueError(f"refusing to recreate the configured database {name!r}; choose another name")
    default.close()
    with psycopg.connect(**_admin_conninfo(default.settings_dict), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        # A throwaway database: commits need not wait for the disk (its runs are replayable).
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    default.settings_dict["NAME"] = name
    process_caches_forget()
    call_command("migrate", verbosity=verbosity, interactive=False)


def process_caches_forget() -> None:
    """Per-process caches a restarted process would not have (all keyed by database ids)."""
    from apps.ledger.services import accounts_forget
    from apps.liquidation.selectors import adl_cache_forget
    from apps.positions.tiers import tiers_forget
    from exchange.params import contracts_forget

    contracts_forget()
    tiers_forget()
    accounts_forget()
    adl_cache_forget()
