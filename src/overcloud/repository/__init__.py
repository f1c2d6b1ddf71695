"""The repository: SQLAlchemy models, migrations and the one class that reads and writes them."""

from overcloud.repository.store import InvalidBoxTransition, InvalidTransition, NotFound, Repository

__all__ = ["InvalidBoxTransition", "InvalidTransition", "NotFound", "Repository"]
