"""SQLAlchemy 2 models. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class OverCloudRow(Base):
    __tablename__ = "overclouds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_task: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ready_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    boxes: Mapped[list["BoxRow"]] = relationship(
        back_populates="overcloud", cascade="all, delete-orphan", order_by="BoxRow.id", lazy="selectin"
    )


class BoxRow(Base):
    __tablename__ = "boxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    overcloud_id: Mapped[str] = mapped_column(ForeignKey("overclouds.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(64))
    handle: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    overlay_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    flavor: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    capacity: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    overcloud: Mapped[OverCloudRow] = relationship(back_populates="boxes")


class TaskRow(Base):
    """The latest state of one workflow task of one OverCloud (the Horizon view)."""

    __tablename__ = "workflow_tasks"
    __table_args__ = (Index("ix_workflow_tasks_oc_wf_task", "overcloud_id", "workflow", "task", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    overcloud_id: Mapped[str] = mapped_column(ForeignKey("overclouds.id", ondelete="CASCADE"), index=True)
    workflow: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class EventRow(Base):
    """An append-only log of state changes, served as server-sent events."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    overcloud_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SecretRow(Base):
    """One encrypted secret of an OverCloud (Fernet ciphertext; see identity/secrets.py)."""

    __tablename__ = "secrets"

    overcloud_id: Mapped[str] = mapped_column(ForeignKey("overclouds.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServiceRow(Base):
    """One Deployment composed onto an OverCloud: its spec (with the Services that select it),
    and its replicas' placement and state (what the service controller last saw)."""

    __tablename__ = "services"

    overcloud_id: Mapped[str] = mapped_column(ForeignKey("overclouds.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    pattern_id: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    replicas: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ready_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
