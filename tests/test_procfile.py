"""The Procfile's environment as the tests read it (tests/procfile.py)."""
from tests.procfile import procfile_env


def test_the_variables_before_each_command_are_its_environment():
    assert procfile_env("web") == {"DB_POOL": "1", "DB_SERVER_SIDE_BINDING": "1"}
    assert procfile_env("matcher") == {"DB_SERVER_SIDE_BINDING": "1", "DB_PREPARED_STATEMENTS": "all"}
    assert procfile_env("beat") == {}
