"""The event hub on a real repository (SQLite): caps, one reader for many streams, fan-out
without gaps or repeats, the end of a stream, and a stream too far behind."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from overcloud import states
from overcloud.api import streams
from overcloud.api.streams import EventHub, TooManyStreams
from overcloud.repository import Repository


@pytest.fixture
def repo(tmp_path):
    r = Repository(f"sqlite:///{tmp_path / 'overcloud.db'}")
    r.upgrade()
    yield r
    r.close()


def new_overcloud(repo) -> str:
    oid = uuid.uuid4().hex
    repo.create_overcloud(oid, "lab", "admin", {"sites": []})
    return oid


def hub_for(repo, running=(), **caps) -> EventHub:
    return EventHub(repo, lambda oc: oc in running, max_total=caps.get("max_total", 1000),
                    max_per_token=caps.get("max_per_token", 1000))


async def ids_of(gen, n: int | None = None) -> list[int]:
    """Event ids a stream yields: all of them (until it ends), or the first n."""
    out = []
    async for chunk in gen:  # one chunk may carry several events
        for line in chunk.splitlines():
            if line.startswith("id: "):
                out.append(int(line[4:]))
        if n is not None and len(out) >= n:
            break
    return out


def test_caps_per_token_and_in_all_and_slots_come_back(repo):
    oid = new_overcloud(repo)

    async def main():
        hub = hub_for(repo, max_total=3, max_per_token=2)
        a1 = await hub.subscribe(oid, "token-a", follow=True)
        await hub.subscribe(oid, "token-a", follow=True)
        with pytest.raises(TooManyStreams, match="this token already has 2 event streams") as per_token:
            await hub.subscribe(oid, "token-a", follow=True)
        await hub.subscribe(oid, "token-b", follow=True)
        with pytest.raises(TooManyStreams, match="3 event streams are open on this Tower") as in_all:
            await hub.subscribe(oid, "token-c", follow=True)
        for exc in (per_token, in_all):
            assert "token-" not in str(exc.value)  # the token is never echoed
        hub.release(a1)
        hub.release(a1)  # idempotent: one slot back, not two
        assert hub.open == 2
        await hub.subscribe(oid, "token-a", follow=True)
        with pytest.raises(TooManyStreams):
            await hub.subscribe(oid, "token-d", follow=True)

    asyncio.run(main())


def test_one_reader_feeds_every_stream_without_gaps_or_repeats(repo):
    oid, other = new_overcloud(repo), new_overcloud(repo)
    for i in range(3):
        repo.add_event(oid, "service", {"n": i})
    before = [e.id for e in repo.events_after(oid, 0)]

    async def main():
        hub = hub_for(repo)
        subs = [await hub.subscribe(oid, "t", follow=True) for _ in range(200)]
        gens = [hub.stream(s, 0) for s in subs]
        readers = asyncio.gather(*(ids_of(g, len(before) + 5) for g in gens))

        def write():  # while the streams read their backlogs and after; another OverCloud's too
            for i in range(5):
                for x in (oid, other):
                    repo.add_event(x, "service", {"n": i})
                time.sleep(streams.TICK / 2)

        await asyncio.gather(readers, asyncio.to_thread(write))
        got = readers.result()
        want = [e.id for e in repo.events_after(oid, 0)]
        assert want[:len(before)] == before and len(want) == len(before) + 5
        assert all(g == want for g in got)
        # one read per tick for all 200 streams, not one (or more) per stream
        assert hub.reads < len(subs)
        for g, s in zip(gens, subs):
            await g.aclose()
            hub.release(s)
        assert hub.open == 0

    asyncio.run(main())


def test_a_stream_without_follow_ends_when_the_overcloud_rests(repo):
    oid = new_overcloud(repo)  # CREATING

    async def main():
        hub = hub_for(repo)
        sub = await hub.subscribe(oid, "t", follow=False)
        reader = asyncio.create_task(ids_of(hub.stream(sub, 0)))
        await asyncio.sleep(3 * streams.TICK)
        assert not reader.done()  # CREATING: the stream waits
        await asyncio.to_thread(repo.set_status, oid, states.FAILED, error="boom")
        ids = await asyncio.wait_for(reader, 30)
        assert ids == [e.id for e in repo.events_after(oid, 0)]  # the FAILED event came before the end

    asyncio.run(main())


def test_a_stream_of_a_resting_overcloud_ends_after_its_backlog_while_a_followed_one_stays(repo):
    oid = new_overcloud(repo)
    repo.set_status(oid, states.FAILED, error="boom")

    async def main():
        hub = hub_for(repo)
        done = await ids_of(hub.stream(await hub.subscribe(oid, "t", follow=False), 0))
        assert done == [e.id for e in repo.events_after(oid, 0)]
        followed = hub.stream(await hub.subscribe(oid, "t", follow=True), 0)
        assert await ids_of(followed, len(done)) == done
        nxt = asyncio.create_task(followed.__anext__())
        await asyncio.sleep(3 * streams.TICK)
        assert not nxt.done()
        nxt.cancel()

    asyncio.run(main())


def test_a_stream_too_far_behind_is_closed_not_buffered(repo):
    oid = new_overcloud(repo)

    async def main():
        hub = hub_for(repo)
        slow = await hub.subscribe(oid, "t", follow=True)
        fast = await hub.subscribe(oid, "t", follow=True)
        fast_ids = asyncio.create_task(ids_of(hub.stream(fast, 0), streams.QUEUE_EVENTS + 51))
        await asyncio.to_thread(lambda: [repo.add_event(oid, "service", {"n": i})
                                         for i in range(streams.QUEUE_EVENTS + 50)])
        await asyncio.wait_for(fast_ids, 60)  # a reader that keeps up gets every event
        assert slow.dropped and slow.queue.qsize() == 1  # nothing but the note that it was dropped
        # the slow one, when it reads at last, gets its backlog and then ends
        ids = await asyncio.wait_for(ids_of(hub.stream(slow, 0)), 30)
        assert ids and ids == sorted(ids)
        hub.release(slow)
        hub.release(fast)
        assert hub.open == 0

    asyncio.run(main())
