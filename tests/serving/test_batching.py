"""Micro-batching of concurrent requests: who rides together, who gets which answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from recpipe.serving.batching import MicroBatcher
from recpipe.serving.predictor import Query, Recommendation


class Model:
    """Answers each query with its own history, so routing mistakes show."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, queries: Sequence[Query]) -> list[Recommendation]:
        self.batches.append([q.history[0] for q in queries])
        if any(q.history[0] == "poison" for q in queries):
            raise RuntimeError("poisoned batch")
        return [Recommendation(list(q.history), [float(q.k)], 0) for q in queries]


def q(name: str, k: int = 1) -> Query:
    return Query([name], k, [])


async def _gather(batcher: MicroBatcher, requests: list[list[Query]]) -> list[object]:
    return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)


def test_requests_of_one_turn_share_one_call_and_get_their_own_answers() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_instances=32)
    requests = [[q("a", 3)], [q("b"), q("c", 2)], [q("d")]]
    answers = asyncio.run(_gather(batcher, requests))
    assert model.batches == [["a", "b", "c", "d"]] and batcher.calls == 1
    assert answers == [
        [Recommendation(["a"], [3.0], 0)],
        [Recommendation(["b"], [1.0], 0), Recommendation(["c"], [2.0], 0)],
        [Recommendation(["d"], [1.0], 0)],
    ]


def test_batches_respect_the_cap_and_keep_requests_whole() -> None:
    model = Model()
    requests = [[q("a")], [q("b"), q("c")], [q("d")], [q("e"), q("f"), q("g")]]
    answers = asyncio.run(_gather(MicroBatcher(model, max_instances=3), requests))
    # "a" and "b,c" fill the cap of 3, so "d" goes in the next call; "e,f,g" is as large
    # as the cap: it runs at once, alone
    assert model.batches == [["e", "f", "g"], ["a", "b", "c"], ["d"]]
    assert [len(a) for a in answers] == [1, 2, 1, 3]  # type: ignore[arg-type]


def test_cap_of_one_means_no_batching() -> None:
    model = Model()
    asyncio.run(_gather(MicroBatcher(model, max_instances=1), [[q("a")], [q("b")]]))
    assert model.batches == [["a"], ["b"]]


def test_a_failing_request_does_not_fail_the_others() -> None:
    model = Model()
    answers = asyncio.run(
        _gather(MicroBatcher(model, max_instances=8), [[q("a")], [q("poison")], [q("c")]])
    )
    assert model.batches == [["a", "poison", "c"], ["a"], ["poison"], ["c"]]
    assert answers[0] == [Recommendation(["a"], [1.0], 0)]
    assert isinstance(answers[1], RuntimeError)
    assert answers[2] == [Recommendation(["c"], [1.0], 0)]


def test_a_lone_request_is_answered_without_waiting_for_company() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_instances=32)

    async def one() -> list[Recommendation]:
        return await asyncio.wait_for(batcher.submit([q("a")]), timeout=1.0)

    assert asyncio.run(one()) == [Recommendation(["a"], [1.0], 0)]


def test_cancelled_requests_are_skipped() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_instances=8)

    async def scenario() -> list[Recommendation]:
        gone = asyncio.ensure_future(batcher.submit([q("gone")]))
        kept = asyncio.ensure_future(batcher.submit([q("kept")]))
        await asyncio.sleep(0)  # both queued, the drain scheduled
        gone.cancel()
        return await kept

    assert asyncio.run(scenario()) == [Recommendation(["kept"], [1.0], 0)]
    assert model.batches == [["kept"]]


def test_bad_cap() -> None:
    with pytest.raises(ValueError, match="max_instances"):
        MicroBatcher(Model(), max_instances=0)
