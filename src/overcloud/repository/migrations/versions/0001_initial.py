"""OverClouds, their boxes, workflow task states and events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "overclouds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("error_task", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("ready_at", TS),
        sa.Column("deleted_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "boxes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("overcloud_id", sa.String(32), sa.ForeignKey("overclouds.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("handle", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("overlay_address", sa.String(64)),
        sa.Column("flavor", sa.String(32), nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("capacity", sa.JSON, nullable=False),
    )
    op.create_table(
        "workflow_tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("overcloud_id", sa.String(32), sa.ForeignKey("overclouds.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("workflow", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("error", sa.Text),
        sa.Column("output", sa.JSON),
    )
    op.create_index("ix_workflow_tasks_oc_wf_task", "workflow_tasks", ["overcloud_id", "workflow", "task"], unique=True)
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("overcloud_id", sa.String(32), nullable=False, index=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_workflow_tasks_oc_wf_task", table_name="workflow_tasks")
    op.drop_table("workflow_tasks")
    op.drop_table("boxes")
    op.drop_table("overclouds")
