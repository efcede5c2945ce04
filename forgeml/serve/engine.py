"""Continuous-batching generation engine: one background thread per served model.

Requests wait in a bounded queue, take a slot of a shared per-slot kv cache, are prefilled
together with those admitted at the same step, then decoded together, one token per step, each
row at its own position (the iteration-level scheduling of Orca, Yu et al., OSDI 2022), through
the model's own `decode_rows`, so every architecture the registry builds (dense, MoE, merged
LoRA) is served the same way.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import nn

from forgeml.models.dense import KVCache
from forgeml.models.sampling import filter_logits, sample_index
from forgeml.serve.prepack import prepack_linears
from forgeml.serve.step import CompiledDecodeStep, compilable

# Byte-level BPE can end a step in the middle of a UTF-8 character; decode shows it as U+FFFD.
_PARTIAL_CHAR = "\ufffd"
GREEDY_BELOW = 1e-5


class EngineBusy(Exception):
    """The request queue is full; retry after `retry_after` seconds (HTTP 429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue is full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SamplingParams:
    """What to generate: temperature 0 is greedy; `seed` makes sampling reproducible."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")


@dataclass(frozen=True)
class PrefillMedia:
    """A request's decoded media for a vision/audio LM's prefill: pixel values [images, C, H, W]
    and log-mel windows [windows, n_mels, frames], in the order their placeholders appear."""

    pixel_values: torch.Tensor | None = None
    audio_features: torch.Tensor | None = None


@dataclass
class StreamEvent:
    """New text of one request; the last event has `finish_reason` ("stop", "length", "error")."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class GenerationHandle:
    """One submitted request: iterate it (sync or async) for its `StreamEvent`s."""

    def __init__(
        self,
        request_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        stop_ids: frozenset[int],
        loop: asyncio.AbstractEventLoop | None,
        media: PrefillMedia | None = None,
    ) -> None:
        self.id = request_id
        self.prompt_ids = prompt_ids
        self.media = media
        self.params = params
        self.stop_ids = stop_ids
        self.cancelled = False
        self._loop = loop
        self._sync: queue.SimpleQueue[StreamEvent] = queue.SimpleQueue()
        self._async: asyncio.Queue[StreamEvent] | None = asyncio.Queue() if loop else None

    def cancel(self) -> None:
        """Free the slot at the next step (the client went away)."""
        self.cancelled = True

    def _emit(self, event: StreamEvent) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, event)
            except RuntimeError:  # the event loop closed under a cancelled request
                self.cancelled = True
        else:
            self._sync.put(event)

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            event = self._sync.get()
            yield event
            if event.finish_reason is not None:
                return

    async def events(self) -> AsyncIterator[StreamEvent]:
        assert self._async is not None, "submit with loop= to consume events asynchronously"
        while True:
            event = await self._async.get()
            yield event
            if event.finish_reason is not None:
                return

    def result(self) -> Completion:
        """Block until done; the whole completion."""
        text, ids = [], []
        for event in self:
            text.append(event.text)
            ids += event.token_ids
        if event.error:
            raise RuntimeError(event.error)
        return Completion(
            "".join(text), ids, event.finish_reason, event.prompt_tokens, event.completion_tokens
        )


@dataclass
class _Slot:
    handle: GenerationHandle
    generator: torch.Generator
    budget: int  # how many tokens it may still generate (max_tokens, capped by the context)
    pos: int = 0  # next cache position to write
    next_token: int = 0
    ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent
    sent: int = 0  # token ids already sent


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token from logits [V]: argmax at temperature 0, else filtered sampling.

    The same draws as `forgeml.models.sampling.generate`, so a seeded request reproduces it.
    """
    # Below ~1e-5 logits / temperature overflows to inf and the softmax to NaN: that is greedy.
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    logits = filter_logits(
        logits.float() / params.temperature, top_k=params.top_k, top_p=params.top_p
    )
    return sample_index(torch.softmax(logits, dim=-1), generator)


class Engine:
    """Serve one model: `submit` requests from any thread; a worker thread batches them.

    At most `max_batch` requests decode together; up to `max_queue` more wait, and a request
    beyond that gets `EngineBusy` at once (bounded memory, HTTP 429 upstream). The model is
    any registry-built class with `new_kv_cache` and `decode_rows` (dense and MoE).
    `threads` is the worker thread's intra-op thread count (default: 1 on CPU).
    `prepack_weights` (CPU) keeps a packed copy of each linear's weight (oneDNN for bf16 and
    fp16, MKL for fp32) for the decode step, used at the batch sizes where it gives bitwise
    the same outputs and is faster (see `prepack_linears`).
    `compile_step` (dense models, CPU) decodes through graphs compiled with static shapes, one per
    (batch, keys) bucket, each compiled in the background on first use and used only where a
    probe finds its logits within floating-point tolerance of the eager step's and its step
    faster (see `CompiledDecodeStep`); off by default: a bucket takes tens of seconds of a
    core to compile, and its outputs are close to, not bitwise, the eager step's.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        device: str | torch.device = "cpu",
        stop_ids: frozenset[int] = frozenset(),
        threads: int | None = None,
        prepack_weights: bool = True,
        compile_step: bool = False,
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        if prepack_weights and self.device.type == "cpu":
            prepack_linears(self.model, max_rows=max_batch)
        self.max_batch = max_batch
        self.max_queue = max_queue
        # A vision/audio LM (forgeml.models.multimodal) keeps its LM's config under `lm`.
        self.max_len = getattr(model.cfg, "lm", model.cfg).max_seq_len
        self.stop_ids = frozenset(stop_ids)
        # A decode step of a small model is hundreds of tiny ops: on CPU a second intra-op
        # thread buys nothing when the machine is quiet and costs many times the step when
        # another job holds the other core (BENCHMARKS.md, serving).
        self.threads = threads or (1 if self.device.type == "cpu" else None)
        self.cache = model.new_kv_cache(max_batch, self.max_len, device=self.device)
        self.compiled_step = None
        # CPU only: the probe times a step in CPU time, which on a GPU counts only launches.
        if compile_step and self.device.type == "cpu" and compilable(self.model):
            self.compiled_step = CompiledDecodeStep(self.model, self.cache, self._eager_step)
        self._slots: list[_Slot | None] = [None] * max_batch
        self._pending: collections.deque[GenerationHandle] = collections.deque()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._running = True
        self._step_seconds = 0.05  # running mean of a decode step, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="forgeml-engine", daemon=True)
        self._thread.start()

    # -- client side ----------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        stop_ids: frozenset[int] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        media: PrefillMedia | None = None,
    ) -> GenerationHandle:
        """Queue a request; raise `EngineBusy` when the queue is full, ValueError if it can't fit.

        `stop_ids` replaces the engine's default stop tokens for this request. Pass the running
        `loop` to consume events with `async for` (`handle.events()`). `media` (a vision/audio
        LM) fills the prompt's expanded image/audio placeholders at prefill.
        """
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.max_len:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_len}"
            )
        stops = self.stop_ids if stop_ids is None else frozenset(stop_ids)
        handle = GenerationHandle(next(self._ids), list(prompt_ids), params, stops, loop, media)
        with self._cond:
            if not self._running:
                raise RuntimeError("the engine is closed")
            if len(self._pending) >= self.max_queue:
                raise EngineBusy(self.retry_after())
            self._pending.append(handle)
            self._cond.notify()
        return handle

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Submit and wait: the whole completion."""
        return self.submit(prompt_ids, params).result()

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: roughly until the queue has drained a batch."""
        waiting = len(self._pending) / max(1, self.max_batch)
        return max(1, round(waiting * 32 * self._step_seconds))

    def stats(self) -> dict[str, int]:
        with self._cond:
            active = sum(s is not None for s in self._slots)
            return {"queued": len(self._pending), "active": active, "slots": self.max_batch}

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout=10)
        if self.compiled_step is not None:
            self.compiled_step.close()

    # -- worker side ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads:
            # Per-thread with torch's OpenMP backend: the submitting threads keep theirs.
            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while self._running and not self._pending and not any(self._slots):
                    self._cond.wait()
                if not self._running:
                    break
                live = self._compact()
                admitted = [
                    self._pending.popleft()
                    for _ in range(min(self.max_batch - live, len(self._pending)))
                ]
            try:
                if admitted:
                    self._prefill(live, admitted)
                if any(self._slots):
                    self._decode()
            except Exception as exc:  # a bug must fail its requests, never hang the clients
                for i, slot in enumerate(self._slots):
                    if slot is not None:
                        slot.handle._emit(StreamEvent("", [], "error", error=repr(exc)))
                        self._slots[i] = None
        for handle in self._pending:
            handle._emit(StreamEvent("", [], "error", error="the engine was closed"))
        for slot in self._slots:
            if slot is not None:
                slot.handle._emit(StreamEvent("", [], "error", error="the engine was closed"))

    @torch.inference_mode()
    def _prefill(self, first: int, handles: list[GenerationHandle]) -> None:
        """Prefill the prompts together into the free cache rows first, first + 1, ...

        One forward over the prompts right-padded to the longest: causal attention keeps the
        padding out of every prompt's own positions, and the padding's keys land past each
        row's length, where `decode_rows`' mask hides them until a decode step overwrites them.
        """
        handles = [h for h in handles if not h.cancelled]
        if not handles:
            return
        width = max(len(h.prompt_ids) for h in handles)
        idx = torch.tensor(
            [h.prompt_ids + [0] * (width - len(h.prompt_ids)) for h in handles],
            dtype=torch.long,
            device=self.device,
        )
        last = torch.tensor([len(h.prompt_ids) - 1 for h in handles], device=self.device)
        end = first + len(handles)
        rows = KVCache(self.cache.k[:, first:end], self.cache.v[:, first:end])
        media = _batched_media(handles, self.device)
        logits = self.model(idx, kv_cache=rows, start_pos=0, logits_at=last, **media)
        for i, handle in enumerate(handles):
            generator = torch.Generator(device=self.device)
            if handle.params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(handle.params.seed)
            n_prompt = len(handle.prompt_ids)
            budget = min(handle.params.max_tokens, self.max_len - n_prompt)
            self._slots[first + i] = _Slot(handle, generator, budget, pos=n_prompt)
        self._sample(first, logits)

    def _compact(self) -> int:
        """Move the live slots to cache rows 0..n-1 (copying their keys/values); return n.

        The decode step then reads the cache rows as one view instead of a gathered copy, and
        free slots are always the rows after the live ones. Nothing is copied unless a request
        before the last live one finished.
        """
        live = 0
        for i, slot in enumerate(self._slots):
            if slot is None or slot.handle.cancelled:
                self._slots[i] = None
                continue
            if i != live:
                self.cache.k[:, live, :, : slot.pos] = self.cache.k[:, i, :, : slot.pos]
                self.cache.v[:, live, :, : slot.pos] = self.cache.v[:, i, :, : slot.pos]
                self._slots[live], self._slots[i] = slot, None
            live += 1
        return live

    def _decode(self) -> None:
        started = time.perf_counter()
        n = self._compact()
        if n == 0:
            return
        live = self._slots[:n]
        tokens = torch.tensor([s.next_token for s in live], device=self.device)
        positions = torch.tensor([s.pos for s in live], device=self.device)
        logits = None
        if self.compiled_step is not None:
            logits = self.compiled_step(tokens, positions)
        if logits is None:
            rows = KVCache(self.cache.k[:, :n], self.cache.v[:, :n])
            logits = self._eager_step(tokens, positions, rows)
        for slot in live:
            slot.pos += 1
        self._sample(0, logits)
        elapsed = time.perf_counter() - started
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * elapsed

    def _eager_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, rows: KVCache
    ) -> torch.Tensor:
        return self.model.decode_rows(tokens, rows, positions)

    def _sample(self, first: int, logits: torch.Tensor) -> None:
        """Sample and accept the next token of slots first.. from their logits [n, V].

        The greedy rows take one batched argmax; a sampling row draws from its own generator,
        so its tokens do not depend on which requests share the batch.
        """
        slots = self._slots[first : first + len(logits)]
        greedy = [i for i, s in enumerate(slots) if s.handle.params.temperature < GREEDY_BELOW]
        tokens = [0] * len(slots)
        if greedy:
            picked = logits if len(greedy) == len(slots) else logits[greedy]
            # max's indices are argmax's (the first maximum), in under half its time on CPU.
            for i, token in zip(greedy, picked.max(dim=-1).indices.tolist(), strict=True):
                tokens[i] = token
        for i, slot in enumerate(slots):
            if slot.handle.params.temperature >= GREEDY_BELOW:
                tokens[i] = sample_token(logits[i], slot.handle.params, slot.generator)
        for i, token in enumerate(tokens):
            self._accept(first + i, token)

    def _accept(self, index: int, token: int) -> None:
        """Record a sampled token for slot `index`: stream its text, finish the request if due."""
        slot = self._slots[index]
        params = slot.handle.params
        if token in slot.handle.stop_ids:
            self._finish(index, "stop", self._text(slot))
            return
        slot.ids.append(token)
        slot.next_token = token
        text = self._text(slot)
        for stop in params.stop:
            at = text.find(stop, max(0, slot.emitted - len(stop)))
            if at >= 0:
                self._finish(index, "stop", text[:at])
                return
        if len(slot.ids) >= slot.budget:
            self._finish(index, "length", text)
            return
        # Hold back what could be the start of a stop string or of a split UTF-8 character.
        hold = max((len(s) - 1 for s in params.stop), default=0)
        safe = len(text) - hold
        while safe > slot.emitted and text[safe - 1] == _PARTIAL_CHAR:
            safe -= 1
        slot.handle._emit(StreamEvent(text[slot.emitted : max(safe, slot.emitted)], [token]))
        slot.emitted = max(safe, slot.emitted)
        slot.sent = len(slot.ids)

    def _text(self, slot: _Slot) -> str:
        return self.tokenizer.decode(slot.ids, skip_special_tokens=True)

    def _finish(self, index: int, reason: str, text: str) -> None:
        slot = self._slots[index]
        self._slots[index] = None
        slot.handle._emit(
            StreamEvent(
                text[slot.emitted :],
                slot.ids[slot.sent :],
                reason,
                prompt_tokens=len(slot.handle.prompt_ids),
                completion_tokens=len(slot.ids),
            )
        )


def _batched_media(
    handles: list[GenerationHandle], device: torch.device
) -> dict[str, torch.Tensor]:
    """The media of prompts prefilled together, concatenated in row order (the model fills
    placeholders row by row); empty when none has media, so a text batch calls the model as
    before."""
    out = {}
    for name in ("pixel_values", "audio_features"):
        parts = [getattr(h.media, name) for h in handles if h.media is not None]
        parts = [p for p in parts if p is not None]
        if parts:
            out[name] = torch.cat(parts).to(device)
    return out
