"""Simulation databases are named after the configured one, so that environments sharing a
PostgreSQL server never drop each other's."""
import pytest
from django.db import connections

from apps.simulation.database import database_name_for, database_recreate_and_use


def test_name_derives_from_the_configured_database():
    configured = connections["default"].settings_dict["NAME"]
    assert database_name_for("crash") == f"{configured}_sim_crash"
    assert database_name_for("Soak-2") == f"{configured}_sim_soak_2"


def test_refuses_names_postgres_would_not_take(settings):
    with pytest.raises(ValueError):
        database_recreate_and_use("Robert'); DROP TABLE students;--")
