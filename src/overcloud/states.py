"""Every allowed OverCloud status transition, in one table (read it top to bottom).

A status change not listed here is a bug in the caller and is refused by the repository.
"""

from __future__ import annotations

CREATING = "CREATING"
READY = "READY"
DEGRADED = "DEGRADED"
FAILED = "FAILED"
DELETING = "DELETING"
DELETED = "DELETED"

ALL = (CREATING, READY, DEGRADED, FAILED, DELETING, DELETED)

TRANSITIONS: dict[str, frozenset[str]] = {
    # the create workflow finished, or failed and reverted everything it made
    CREATING: frozenset({READY, FAILED}),
    # visibility saw a box stop answering; a delete was asked for
    READY: frozenset({DEGRADED, DELETING}),
    # the box answers again; a delete was asked for
    DEGRADED: frozenset({READY, DELETING}),
    # a failed create has nothing left; a failed delete may be retried
    FAILED: frozenset({DELETING}),
    # the delete workflow finished, or stopped before destroying anything and said why
    DELETING: frozenset({DELETED, FAILED}),
    # final
    DELETED: frozenset(),
}

#: statuses from which DELETE may start a delete workflow
DELETABLE = frozenset(s for s, nxt in TRANSITIONS.items() if DELETING in nxt)
#: statuses in which an OverCloud is up: its services run and its Fabric answers
UP = frozenset({READY, DEGRADED})
#: statuses in which an OverCloud still owns resources (the sweeper leaves them alone)
LIVE = frozenset({CREATING, READY, DEGRADED, DELETING, FAILED})


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


# -- boxes ------------------------------------------------------------------------------------
# Every allowed state change of one box record, in one table (read it top to bottom). Writing
# the state a box already has is always allowed: a workflow task that re-runs after a restart
# writes it again. The repository refuses anything else (InvalidBoxTransition).

BOX_BOOTING = "BOOTING"
BOX_READY = "READY"
BOX_DELETING = "DELETING"
BOX_RELEASED = "RELEASED"
BOX_DELETED = "DELETED"

BOX_ALL = (BOX_BOOTING, BOX_READY, BOX_DELETING, BOX_RELEASED, BOX_DELETED)

BOX_TRANSITIONS: dict[str, frozenset[str]] = {
    # acquired: its supervisord answers; the Post or cluster check passed (or the create was
    # reverted, or it ends FAILED, and a delete is asked for)
    BOX_BOOTING: frozenset({BOX_READY, BOX_DELETING}),
    # a delete was asked for
    BOX_READY: frozenset({BOX_DELETING}),
    # its driver gave it back; a delete that ends without a release (nothing was acquired)
    BOX_DELETING: frozenset({BOX_RELEASED, BOX_DELETED}),
    # the delete finished; a delete that failed after the release is asked again
    BOX_RELEASED: frozenset({BOX_DELETED, BOX_DELETING}),
    # final
    BOX_DELETED: frozenset(),
}

#: the state an OverCloud's boxes take when the OverCloud reaches a status (lifecycle._settle)
BOX_STATE_OF_STATUS = {READY: BOX_READY, DELETED: BOX_DELETED}


def box_can_transition(current: str | None, new: str) -> bool:
    """Whether a box may go from ``current`` to ``new`` (``None``: a new record, which starts BOOTING)."""
    if current is None:
        return new == BOX_BOOTING
    return new == current or new in BOX_TRANSITIONS.get(current, frozenset())
