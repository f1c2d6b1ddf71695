"""Alembic environment: run with a connection handed in by ``overcloud.repository.migrate``."""

from alembic import context

from overcloud.repository.models import Base

VERSION_TABLE = "overcloud_alembic_version"  # TaskFlow keeps its own alembic_version

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
