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
