"""The repository: SQLAlchemy models, migrations and the one class that reads and writes them."""

from overcloud.repository.store import InvalidTransition, NotFound, Repository

__all__ = ["InvalidTransition", "NotFound", "Repository"]
