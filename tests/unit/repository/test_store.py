"""The repository on SQLite and on a real PostgreSQL server."""

import threading
import uuid

import pytest

from overcloud import states
from overcloud.repository import InvalidTransition, NotFound, Repository


@pytest.fixture
def repo(database_url):
    r = Repository(database_url)
    r.upgrade()
    yield r
    r.close()


def new_id() -> str:
    return uuid.uuid4().hex


BOX = {"name": "p0", "role": "post", "site": "local-a", "handle": "oc-x-p0", "address": "10.0.0.2",
       "flavor": {"name": "small", "cpus": 0.5, "memory_mb": 512}}


def test_upgrade_is_idempotent(repo):
    repo.upgrade()
    assert repo.list() == []


def test_create_get_list_and_timestamps(repo):
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {"sites": []}, workflow=("create_overcloud", {"a": "std.noop"}))
    row = repo.get(oid)
    assert [(t.task, t.state) for t in repo.tasks(oid)] == [("a", "PENDING")]
    assert row.status == states.CREATING and row.created_at is not None
    assert [r.id for r in repo.list()] == [oid]
    assert repo.list(tenant_id="other") == []
    repo.set_status(oid, states.READY)
    got = repo.get(oid)
    assert got.status == states.READY and got.ready_at is not None
    with pytest.raises(NotFound):
        repo.get(new_id())


def test_transitions_follow_the_table(repo):
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    with pytest.raises(InvalidTransition):
        repo.set_status(oid, states.DELETING)  # CREATING cannot be deleted
    repo.set_status(oid, states.FAILED, error_task="acquire_boxes", error="boom")
    failed = repo.get(oid)
    assert (failed.error_task, failed.error) == ("acquire_boxes", "boom")
    repo.set_status(oid, states.DELETING, expect=states.DELETABLE)
    assert repo.get(oid).error is None
    repo.set_status(oid, states.DELETED)
    assert repo.get(oid).deleted_at is not None
    assert repo.list() == [] and [r.id for r in repo.list(include_deleted=True)] == [oid]
    assert oid not in repo.live_ids()


def test_only_one_of_many_concurrent_deletes_wins(repo):
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    repo.set_status(oid, states.READY)
    wins, losses = [], []

    def try_delete():
        try:
            repo.set_status(oid, states.DELETING, expect=states.DELETABLE)
            wins.append(1)
        except InvalidTransition:
            losses.append(1)

    threads = [threading.Thread(target=try_delete) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7


def test_boxes_are_saved_idempotently_by_name(repo):
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    repo.save_boxes(oid, [BOX])
    repo.save_boxes(oid, [{**BOX, "overlay_address": "10.250.0.1"}])
    boxes = repo.get(oid).boxes
    assert len(boxes) == 1 and boxes[0].overlay_address == "10.250.0.1"
    repo.set_box_fields(oid, "p0", capacity={"cpus": 0.5}, state="READY")
    assert repo.get(oid).boxes[0].capacity == {"cpus": 0.5}
    assert repo.count_boxes() == 1


def test_task_records_count_attempts_and_emit_events(repo):
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    repo.seed_tasks(oid, "create_overcloud", {"a": "std.noop", "b": "std.noop"})
    repo.record_task(oid, "create_overcloud", "a", "RUNNING")
    repo.record_task(oid, "create_overcloud", "a", "FAILURE", error="x")
    repo.record_task(oid, "create_overcloud", "a", "RUNNING")
    repo.record_task(oid, "create_overcloud", "a", "SUCCESS", output={"message": "ok"})
    tasks = {t.task: t for t in repo.tasks(oid)}
    assert tasks["a"].attempts == 2 and tasks["a"].state == "SUCCESS" and tasks["a"].output == {"message": "ok"}
    assert tasks["b"].state == "PENDING"
    events = repo.events_after(oid)
    assert [e.kind for e in events][:1] == ["status"]
    assert [e.data["state"] for e in events if e.kind == "task"] == ["RUNNING", "FAILURE", "RUNNING", "SUCCESS"]
    later = repo.events_after(oid, events[1].id)
    assert len(later) == len(events) - 2


def test_counts_by_status(repo):
    a, b = new_id(), new_id()
    repo.create_overcloud(a, "a", "admin", {})
    repo.create_overcloud(b, "b", "admin", {})
    repo.set_status(b, states.READY)
    counts = repo.count_by_status()
    assert counts[states.CREATING] == 1 and counts[states.READY] == 1 and counts[states.DELETED] == 0


def test_the_status_and_its_task_change_together_and_stale_events_do_not_undo_them(repo):
    import datetime as dt

    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {}, workflow=("create_overcloud", {"register": "overcloud.mark_ready"}))
    running_at = dt.datetime.now(dt.timezone.utc)
    repo.set_status(oid, states.READY, done_task=("create_overcloud", "register"))
    assert [(t.task, t.state) for t in repo.tasks(oid)] == [("register", "SUCCESS")]
    # the writer thread delivers the task's RUNNING event only now: it must not undo SUCCESS
    repo.record_task(oid, "create_overcloud", "register", "RUNNING", at=running_at)
    (t,) = repo.tasks(oid)
    assert t.state == "SUCCESS" and t.started_at is not None and t.attempts == 1


def test_a_status_event_names_the_status_it_left(repo):
    """The UPDATE refreshed the row in the session, so every event said previous == status."""
    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    repo.set_status(oid, states.READY)
    repo.set_status(oid, states.DEGRADED, expect={states.READY})
    repo.set_status(oid, states.DELETING, expect=states.DELETABLE)
    moves = [(e.data["previous"], e.data["status"]) for e in repo.events_after(oid) if "previous" in e.data]
    assert moves == [(states.CREATING, states.READY), (states.READY, states.DEGRADED),
                     (states.DEGRADED, states.DELETING)]


def test_box_states_follow_the_table(repo):
    from overcloud import states
    from overcloud.repository import InvalidBoxTransition

    oid = new_id()
    repo.create_overcloud(oid, "lab", "admin", {})
    repo.save_boxes(oid, [BOX])
    assert repo.get(oid).boxes[0].state == states.BOX_BOOTING
    repo.set_box_fields(oid, "p0", state=states.BOX_READY)
    with pytest.raises(InvalidBoxTransition, match="box p0 of OverCloud .* is READY; it cannot become BOOTING"):
        repo.set_box_fields(oid, "p0", state=states.BOX_BOOTING)
    with pytest.raises(InvalidBoxTransition):
        repo.set_boxes_state(oid, states.BOX_RELEASED)  # a box is released only once deleting
    assert repo.get(oid).boxes[0].state == states.BOX_READY  # refused: nothing changed
    for s in (states.BOX_DELETING, states.BOX_RELEASED, states.BOX_DELETED):
        repo.set_boxes_state(oid, s)
    with pytest.raises(InvalidBoxTransition):
        repo.save_boxes(oid, [BOX])  # a deleted box does not come back
