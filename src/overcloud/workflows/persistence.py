"""TaskFlow persistence backends, tuned for the engine's per-task overhead.

TaskFlow's SQLAlchemy backend rebuilds its table metadata on every
connection it opens (one per state transition), which defeats SQLAlchemy's
compiled-statement cache: measured ~25 ms per no-op task even on
in-memory SQLite. Reusing one set of tables per backend brings that to
~6 ms (see docs/workflows.md). For SQLite files we also own the SQLAlchemy
engine: a connection pool instead of TaskFlow's NullPool (no re-open per
write), WAL and ``synchronous=NORMAL`` — a committed transition survives
kill -9 of the Tower (only an OS crash / power loss can lose the last few).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import sqlalchemy as sa
from taskflow.persistence import backends as tf_backends
from taskflow.persistence.backends import impl_sqlalchemy
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

logger = logging.getLogger(__name__)

__all__ = ["open_backend"]


class _CachedTablesConnection(impl_sqlalchemy.Connection):
    """A TaskFlow connection that reuses its backend's table objects."""

    def __init__(self, backend: CachedSQLAlchemyBackend, upgrade_lock: Any) -> None:  # noqa: D107
        # Deliberately does not call super().__init__: that rebuilds the tables.
        self._backend = backend
        self._upgrade_lock = upgrade_lock
        self._engine = backend.engine
        self._metadata, self._tables, self._converter = backend.schema


class CachedSQLAlchemyBackend(impl_sqlalchemy.SQLAlchemyBackend):
    """SQLAlchemy backend whose connections share one MetaData/Table set."""

    def __init__(self, conf: dict[str, Any], engine: sa.Engine | None = None) -> None:
        super().__init__(conf, engine=engine)
        metadata = sa.MetaData()
        tables = tf_tables.fetch(metadata)
        self.schema = (metadata, tables, impl_sqlalchemy._Alchemist(tables))
        if engine is not None:
            self._owns_engine = True  # we built it for this backend: dispose on close

    def get_connection(self) -> impl_sqlalchemy.Connection:
        conn = _CachedTablesConnection(self, upgrade_lock=self._upgrade_lock)
        if not self._validated:
            conn.validate(max_retries=self._max_retries)
            self._validated = True
        return conn


def _sqlite_engine(url: str) -> sa.Engine:
    in_memory = url.strip().lower() in ("sqlite://", "sqlite:///:memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if in_memory:
        kwargs["poolclass"] = sa.pool.StaticPool  # one shared connection, else each sees an empty db
    engine = sa.create_engine(url, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")  # TaskFlow's schema cascades deletes
        finally:
            cursor.close()

    return engine


def open_backend(url: str | None) -> Any:
    """Open (and migrate) a TaskFlow backend for `url`; None means in-memory."""
    if url is None or url == "memory://":
        backend = tf_backends.fetch({"connection": "memory://"})
    else:
        engine = _sqlite_engine(url) if url.startswith("sqlite") else sa.create_engine(url, pool_pre_ping=True)
        backend = CachedSQLAlchemyBackend({"connection": url}, engine=engine)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend
