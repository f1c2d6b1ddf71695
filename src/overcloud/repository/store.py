"""The repository: the only code that reads or writes OverCloud records.

Every method opens and closes its own short session, so it is safe to call
from API handlers and from workflow threads at once. SQLite runs in WAL mode
with a busy timeout, so readers never block the single writer.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Iterable

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from overcloud import states
from overcloud.repository.models import BoxRow, EventRow, OverCloudRow, SecretRow, ServiceRow, TaskRow, utcnow

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


class NotFound(LookupError):
    def __init__(self, overcloud_id: str):
        super().__init__(f"no OverCloud with id {overcloud_id!r}")
        self.overcloud_id = overcloud_id


class InvalidTransition(RuntimeError):
    def __init__(self, overcloud_id: str, current: str, new: str):
        super().__init__(f"OverCloud {overcloud_id} is {current}; it cannot become {new}")
        self.overcloud_id, self.current, self.new = overcloud_id, current, new


class InvalidBoxTransition(RuntimeError):
    """A box state change ``states.BOX_TRANSITIONS`` does not list: a bug in the caller."""

    def __init__(self, overcloud_id: str, box: str, current: str | None, new: str):
        super().__init__(f"box {box} of OverCloud {overcloud_id} is {current}; it cannot become {new}")
        self.overcloud_id, self.box, self.current, self.new = overcloud_id, box, current, new


def _check_box_state(overcloud_id: str, box: str, current: str | None, new: str) -> None:
    if not states.box_can_transition(current, new):
        raise InvalidBoxTransition(overcloud_id, box, current, new)


def make_engine(url: str) -> Engine:
    """An engine tuned for many short sessions from threads (SQLite WAL, PostgreSQL psycopg 3)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (``overcloud db upgrade``; also run by ``serve``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Repository:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    # -- OverClouds -------------------------------------------------------
    def create_overcloud(
        self, overcloud_id: str, name: str, tenant_id: str, spec: dict[str, Any],
        workflow: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        """Insert a CREATING OverCloud and, in the same transaction, its workflow's
        tasks as PENDING (``workflow`` = (name, {task: action}))."""
        row = OverCloudRow(
            id=overcloud_id, name=name, tenant_id=tenant_id, status=states.CREATING, spec=spec, info={}
        )
        with self.session() as s, s.begin():
            s.add(row)
            s.add(EventRow(overcloud_id=overcloud_id, kind="status", data={"status": states.CREATING}))
            if workflow is not None:
                s.flush()
                wf, tasks = workflow
                for task, action in tasks.items():
                    s.add(TaskRow(overcloud_id=overcloud_id, workflow=wf, task=task, action=action, state="PENDING", attempts=0))

    def get(self, overcloud_id: str) -> OverCloudRow:
        with self.session() as s:
            row = s.get(OverCloudRow, overcloud_id)
            if row is None:
                raise NotFound(overcloud_id)
            return row

    def list(self, tenant_id: str | None = None, include_deleted: bool = False) -> list[OverCloudRow]:
        q = select(OverCloudRow).order_by(OverCloudRow.created_at)
        if tenant_id is not None:
            q = q.where(OverCloudRow.tenant_id == tenant_id)
        if not include_deleted:
            q = q.where(OverCloudRow.status != states.DELETED)
        with self.session() as s:
            return list(s.scalars(q))

    def live_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(OverCloudRow.id).where(OverCloudRow.status.in_(states.LIVE))))

    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(OverCloudRow.status, func.count()).group_by(OverCloudRow.status))
            counts = {st: 0 for st in states.ALL}
            counts.update({st: n for st, n in rows})
            return counts

    def count_boxes(self) -> int:
        with self.session() as s:
            q = select(func.count()).select_from(BoxRow).join(OverCloudRow).where(OverCloudRow.status.in_(states.LIVE))
            return int(s.scalar(q) or 0)

    def set_status(
        self,
        overcloud_id: str,
        new: str,
        *,
        expect: Iterable[str] | None = None,
        error_task: str | None = None,
        error: str | None = None,
        done_task: tuple[str, str] | None = None,
    ) -> OverCloudRow:
        """Move to ``new`` if the transition table allows it (and, with ``expect``, only from
        those statuses). Atomic: a compare-and-set, so two callers never both win."""
        with self.session() as s, s.begin():
            row = s.get(OverCloudRow, overcloud_id, with_for_update=True)
            if row is None:
                raise NotFound(overcloud_id)
            previous = row.status  # read now: the UPDATE below refreshes ``row`` in this session
            allowed = set(expect) if expect is not None else None
            if not states.can_transition(previous, new) or (allowed is not None and previous not in allowed):
                raise InvalidTransition(overcloud_id, previous, new)
            values: dict[str, Any] = {"status": new, "updated_at": utcnow()}
            if new == states.READY and row.ready_at is None:
                values["ready_at"] = utcnow()
            if new == states.DELETED:
                values["deleted_at"] = utcnow()
            if new == states.FAILED:
                values["error_task"], values["error"] = error_task, error
            elif new in (states.READY, states.DELETING):
                values["error_task"], values["error"] = None, None
            res = s.execute(
                update(OverCloudRow)
                .where(OverCloudRow.id == overcloud_id, OverCloudRow.status == previous)
                .values(**values)
            )
            if res.rowcount != 1:  # somebody else moved it between our read and write
                raise InvalidTransition(overcloud_id, previous, new)
            data: dict[str, Any] = {"status": new, "previous": previous}
            if error:
                data.update(task=error_task, error=error)
            s.add(EventRow(overcloud_id=overcloud_id, kind="status", data=data))
            if done_task is not None:
                # the task that makes this status (register, mark_deleted) is done in the same
                # transaction: nobody sees READY while its last task still shows RUNNING
                workflow, task = done_task
                row_t = s.scalar(select(TaskRow).where(
                    TaskRow.overcloud_id == overcloud_id, TaskRow.workflow == workflow, TaskRow.task == task))
                if row_t is not None:
                    row_t.state, row_t.ended_at = "SUCCESS", utcnow()
        return self.get(overcloud_id)

    def update_info(self, overcloud_id: str, **info: Any) -> None:
        with self.session() as s, s.begin():
            row = s.get(OverCloudRow, overcloud_id)
            if row is None:
                raise NotFound(overcloud_id)
            row.info = {**(row.info or {}), **info}

    # -- boxes ------------------------------------------------------------
    def save_boxes(self, overcloud_id: str, boxes: list[dict[str, Any]], state: str = states.BOX_BOOTING) -> None:
        """Insert or update boxes by name (idempotent: a re-run task saves the same boxes again).
        A box's state follows ``states.BOX_TRANSITIONS``."""
        with self.session() as s, s.begin():
            existing = {b.name: b for b in s.scalars(select(BoxRow).where(BoxRow.overcloud_id == overcloud_id))}
            for box in boxes:
                flavor = box["flavor"]
                row = existing.get(box["name"]) or BoxRow(overcloud_id=overcloud_id, name=box["name"], capacity={})
                new_state = box.get("state", state)
                _check_box_state(overcloud_id, box["name"], row.state, new_state)
                row.role, row.site, row.handle = box["role"], box["site"], box["handle"]
                row.address, row.overlay_address = box["address"], box.get("overlay_address")
                row.flavor, row.cpus, row.memory_mb = flavor["name"], flavor["cpus"], flavor["memory_mb"]
                row.state = new_state
                if box.get("capacity"):
                    row.capacity = box["capacity"]
                s.add(row)

    def set_box_fields(self, overcloud_id: str, name: str, **fields: Any) -> None:
        with self.session() as s, s.begin():
            row = s.scalar(select(BoxRow).where(BoxRow.overcloud_id == overcloud_id, BoxRow.name == name))
            if row is None:
                raise NotFound(f"{overcloud_id}/{name}")
            if "state" in fields:
                _check_box_state(overcloud_id, name, row.state, fields["state"])
            for key, value in fields.items():
                setattr(row, key, value)

    def set_boxes_state(self, overcloud_id: str, state: str) -> None:
        """Every box of the OverCloud to ``state``; refused (nothing changes) when the table does
        not allow it for one of them."""
        with self.session() as s, s.begin():
            for row in s.scalars(select(BoxRow).where(BoxRow.overcloud_id == overcloud_id)):
                _check_box_state(overcloud_id, row.name, row.state, state)
            s.execute(update(BoxRow).where(BoxRow.overcloud_id == overcloud_id).values(state=state))

    # -- workflow tasks ---------------------------------------------------
    def record_task(
        self,
        overcloud_id: str,
        workflow: str,
        task: str,
        state: str,
        *,
        action: str = "",
        at: dt.datetime | None = None,
        error: str | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        at = at or utcnow()
        for _ in range(3):
            try:
                with self.session() as s, s.begin():
                    row = s.scalar(
                        select(TaskRow).where(
                            TaskRow.overcloud_id == overcloud_id, TaskRow.workflow == workflow, TaskRow.task == task
                        )
                    )
                    if row is None:
                        row = TaskRow(overcloud_id=overcloud_id, workflow=workflow, task=task, attempts=0)
                        s.add(row)
                    row.action = action or row.action or ""
                    ended = row.ended_at
                    if ended is not None and ended.tzinfo is None:
                        ended = ended.replace(tzinfo=at.tzinfo)
                    if state in ("PENDING", "RUNNING") and row.state == "SUCCESS" and ended is not None and at <= ended:
                        # an older event reaching the writer after the task was marked done:
                        # keep what it tells (when it started), not the state it had then
                        if state == "RUNNING" and row.started_at is None:
                            row.started_at, row.attempts = at, (row.attempts or 0) + 1
                        return
                    row.state = state
                    if state == "RUNNING":
                        row.attempts = (row.attempts or 0) + 1
                        row.started_at, row.ended_at, row.error = at, None, None
                    elif state in ("SUCCESS", "FAILURE"):
                        row.ended_at = at
                    if error is not None:
                        row.error = error
                    if output is not None:
                        row.output = output
                    s.add(
                        EventRow(
                            overcloud_id=overcloud_id,
                            at=at,
                            kind="task",
                            data={"workflow": workflow, "task": task, "state": state, **({"error": error} if error else {})},
                        )
                    )
                return
            except IntegrityError:  # two threads inserted the same first row; retry as an update
                continue

    def tasks(self, overcloud_id: str, workflow: str | None = None) -> list[TaskRow]:
        q = select(TaskRow).where(TaskRow.overcloud_id == overcloud_id).order_by(TaskRow.id)
        if workflow:
            q = q.where(TaskRow.workflow == workflow)
        with self.session() as s:
            return list(s.scalars(q))

    def seed_tasks(self, overcloud_id: str, workflow: str, tasks: dict[str, str]) -> None:
        """Record every task of a workflow as PENDING before it starts, so the Horizon view is whole."""
        with self.session() as s, s.begin():
            existing = set(
                s.scalars(select(TaskRow.task).where(TaskRow.overcloud_id == overcloud_id, TaskRow.workflow == workflow))
            )
            for task, action in tasks.items():
                if task not in existing:
                    s.add(TaskRow(overcloud_id=overcloud_id, workflow=workflow, task=task, action=action, state="PENDING", attempts=0))

    # -- events -----------------------------------------------------------
    def add_event(self, overcloud_id: str, kind: str, data: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            s.add(EventRow(overcloud_id=overcloud_id, kind=kind, data=data))

    def events_after(self, overcloud_id: str, after_id: int = 0, limit: int = 500) -> list[EventRow]:
        q = (
            select(EventRow)
            .where(EventRow.overcloud_id == overcloud_id, EventRow.id > after_id)
            .order_by(EventRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return list(s.scalars(q))

    def events_since(self, after_id: int, limit: int = 1000) -> list[EventRow]:
        """Every OverCloud's events after ``after_id``, oldest first (the API's one event watcher)."""
        q = select(EventRow).where(EventRow.id > after_id).order_by(EventRow.id).limit(limit)
        with self.session() as s:
            return list(s.scalars(q))

    def last_event_id(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.max(EventRow.id))) or 0

    # -- secrets (ciphertext only: sealing and opening is the caller's) ----
    def put_secret(self, overcloud_id: str, name: str, ciphertext: str) -> None:
        """Store a secret once; a second put of the same name keeps the first (idempotent actions)."""
        with self.session() as s, s.begin():
            if s.get(SecretRow, (overcloud_id, name)) is None:
                s.add(SecretRow(overcloud_id=overcloud_id, name=name, ciphertext=ciphertext))

    def get_secret(self, overcloud_id: str, name: str) -> str | None:
        with self.session() as s:
            row = s.get(SecretRow, (overcloud_id, name))
            return row.ciphertext if row else None

    def delete_secrets(self, overcloud_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(SecretRow.__table__.delete().where(SecretRow.overcloud_id == overcloud_id))

    # -- composed services -------------------------------------------------
    def add_services(self, rows: list[dict[str, Any]]) -> None:
        """Insert the Deployments of one pattern at once (all or none)."""
        with self.session() as s, s.begin():
            for r in rows:
                s.add(ServiceRow(**r))

    def services(self, overcloud_id: str | None = None) -> list[ServiceRow]:
        q = select(ServiceRow).order_by(ServiceRow.overcloud_id, ServiceRow.created_at, ServiceRow.name)
        if overcloud_id is not None:
            q = q.where(ServiceRow.overcloud_id == overcloud_id)
        with self.session() as s:
            return list(s.scalars(q))

    def service(self, overcloud_id: str, name: str) -> ServiceRow | None:
        with self.session() as s:
            return s.get(ServiceRow, (overcloud_id, name))

    def update_service(self, overcloud_id: str, name: str, **fields: Any) -> None:
        with self.session() as s, s.begin():
            row = s.get(ServiceRow, (overcloud_id, name))
            if row is None:
                return
            for k, v in fields.items():
                setattr(row, k, v)

    def delete_service(self, overcloud_id: str, name: str) -> None:
        with self.session() as s, s.begin():
            s.execute(ServiceRow.__table__.delete().where(ServiceRow.overcloud_id == overcloud_id, ServiceRow.name == name))
