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
