import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (Debian postgresql, temp dir, free port)."""
    server = PostgresServer().start()
    yield server
    server.stop()


_db_counter = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The repository runs on both: SQLite (the embedded default) and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'overcloud.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"oc_test_{os.getpid()}_{next(_db_counter)}")
