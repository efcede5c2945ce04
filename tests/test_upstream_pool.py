"""`ReplicaPool`: least-outstanding balancing with round-robin ties, a replica that cannot be
reached passed over (and tried again after its cooldown), 503 when none answers, and the
upstream's own refusals not retried elsewhere; replicas are httpx mock transports."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from forgeml.serve.upstream import ReplicaPool, Upstream, UpstreamError


class FakeReplica:
    """Answers as replica `name`; `mode` switches it to refusing connections or to a 400."""

    def __init__(self, name: str) -> None:
        self.name, self.mode, self.calls = name, "ok", 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "reject":
            return httpx.Response(400, json={"error": {"message": "too many tokens"}})
        if json.loads(request.content).get("stream"):
            body = f'data: {{"choices": [{{"text": "{self.name}"}}]}}\n\ndata: [DONE]\n\n'
            return httpx.Response(200, content=body.encode())
        return httpx.Response(200, json={"choices": [{"text": self.name}]})


def make_pool(n: int = 2, cooldown: float = 60.0) -> tuple[ReplicaPool, list[FakeReplica]]:
    fakes = [FakeReplica(f"r{i}") for i in range(n)]
    upstreams = []
    for fake in fakes:
        upstream = Upstream(f"http://{fake.name}.invalid/v1", "sk-replica-key-0123")
        upstream._client = httpx.AsyncClient(
            base_url=upstream.base_url, transport=httpx.MockTransport(fake.handle)
        )
        upstreams.append(upstream)
    return ReplicaPool(upstreams, cooldown=cooldown), fakes


async def who(pool: ReplicaPool) -> str:
    return (await pool.post("/completions", {"prompt": "x"}))["choices"][0]["text"]


def test_idle_replicas_take_turns_and_a_busy_one_waits():
    async def run():
        pool, _ = make_pool(3)
        assert [await who(pool) for _ in range(6)] == ["r0", "r1", "r2"] * 2
        stream = await pool.open_stream("/completions", {"stream": True})  # r0 is busy
        assert pool.replicas[0].outstanding == 1
        assert {await who(pool) for _ in range(4)} == {"r1", "r2"}
        chunks = [c async for c in stream.chunks()]  # read to the end: closed
        assert chunks == [{"choices": [{"text": "r0"}]}]
        assert [r.outstanding for r in pool.replicas] == [0, 0, 0]
        assert "r0" in {await who(pool) for _ in range(3)}
        await pool.aclose()

    asyncio.run(run())


def test_an_unreachable_replica_is_passed_over_then_tried_again():
    async def run():
        pool, fakes = make_pool(2, cooldown=60.0)
        fakes[0].mode = "down"
        assert [await who(pool) for _ in range(4)] == ["r1"] * 4
        assert fakes[0].calls == 1  # tried once, then passed over for its cooldown
        stream = await pool.open_stream("/completions", {"stream": True})
        assert [c async for c in stream.chunks()] == [{"choices": [{"text": "r1"}]}]
        fakes[0].mode = "ok"
        pool.replicas[0].down_until = 0.0  # the cooldown is over
        assert {await who(pool) for _ in range(2)} == {"r0", "r1"}
        await pool.aclose()

    asyncio.run(run())


def test_no_replica_answering_is_a_503_and_a_refusal_is_not_retried():
    async def run():
        pool, fakes = make_pool(2)
        for fake in fakes:
            fake.mode = "down"
        with pytest.raises(UpstreamError) as caught:
            await who(pool)
        assert (caught.value.status, caught.value.code) == (503, "upstream_unavailable")
        assert caught.value.retry_after == "60"
        with pytest.raises(UpstreamError) as caught:
            await pool.open_stream("/completions", {"stream": True})
        assert caught.value.status == 503
        assert [r.outstanding for r in pool.replicas] == [0, 0]
        with pytest.raises(UpstreamError, match="no replica"):
            pool.list_models()

        pool, fakes = make_pool(2)
        fakes[0].mode = fakes[1].mode = "reject"
        with pytest.raises(UpstreamError) as caught:
            await who(pool)
        assert caught.value.status == 400 and "too many tokens" in caught.value.message
        assert sum(f.calls for f in fakes) == 1  # the request, not the replica, was wrong
        await pool.aclose()

    asyncio.run(run())
