"""The status table: every status is reachable from CREATING, and only DELETED is final."""

from overcloud import states


def test_every_status_has_an_entry_and_targets_are_known():
    assert set(states.TRANSITIONS) == set(states.ALL)
    for targets in states.TRANSITIONS.values():
        assert targets <= set(states.ALL)


def test_every_status_is_reachable_from_creating():
    seen, todo = {states.CREATING}, [states.CREATING]
    while todo:
        for nxt in states.TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(states.ALL)


def test_only_deleted_is_final_and_every_live_status_can_reach_deleted():
    finals = {s for s, t in states.TRANSITIONS.items() if not t}
    assert finals == {states.DELETED}
    for s in states.LIVE:
        if s == states.CREATING:
            continue  # a create must end (READY/FAILED) before it can be deleted
        if s == states.DELETING:
            assert states.DELETED in states.TRANSITIONS[s]
        else:
            assert states.DELETING in states.TRANSITIONS[s]


def test_creating_cannot_be_deleted_directly():
    assert not states.can_transition(states.CREATING, states.DELETING)
    assert states.CREATING not in states.DELETABLE


# -- boxes ------------------------------------------------------------------------------------

def test_box_table_covers_every_box_state_and_only_deleted_is_final():
    assert set(states.BOX_TRANSITIONS) == set(states.BOX_ALL)
    for targets in states.BOX_TRANSITIONS.values():
        assert targets <= set(states.BOX_ALL)
    assert {s for s, t in states.BOX_TRANSITIONS.items() if not t} == {states.BOX_DELETED}


def test_every_box_state_is_reachable_from_booting_and_every_live_one_reaches_deleted():
    def reach(start):
        seen, todo = {start}, [start]
        while todo:
            for nxt in states.BOX_TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reach(states.BOX_BOOTING) == set(states.BOX_ALL)
    for s in states.BOX_ALL:
        assert states.BOX_DELETED in reach(s)


def test_box_transitions_the_workflows_make():
    ok = states.box_can_transition
    assert ok(None, states.BOX_BOOTING)  # acquire saves a new box
    assert not ok(None, states.BOX_READY)
    for same in states.BOX_ALL:  # a re-run task writes the same state again
        assert ok(same, same)
    assert ok(states.BOX_BOOTING, states.BOX_READY)  # post / cluster checks, mark_ready
    assert ok(states.BOX_READY, states.BOX_DELETING) and ok(states.BOX_BOOTING, states.BOX_DELETING)
    assert ok(states.BOX_DELETING, states.BOX_RELEASED) and ok(states.BOX_RELEASED, states.BOX_DELETED)
    assert ok(states.BOX_RELEASED, states.BOX_DELETING)  # a failed delete asked again
    assert not ok(states.BOX_DELETED, states.BOX_READY)
    assert not ok(states.BOX_RELEASED, states.BOX_READY)
    assert not ok(states.BOX_READY, states.BOX_BOOTING)
    # lifecycle._settle: the boxes follow the OverCloud
    assert states.BOX_STATE_OF_STATUS == {states.READY: states.BOX_READY, states.DELETED: states.BOX_DELETED}
