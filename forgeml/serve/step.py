"""The serving engine's decode step compiled with static shapes (torch.compile, inductor).

One graph per (batch bucket, key bucket): the live rows are padded to a power of two and
attention reads a power-of-two prefix of the kv cache, masked per row, so every shape in the
graph is fixed and the ~200 small ops of an eager step fuse into a few kernels. A bucket's
graph is used only after a probe on live inputs finds its logits within tolerance of the eager
step's and its step faster; otherwise that bucket stays eager. Within tolerance, the graphs may
also multiply through kernels the bitwise-equal eager step may not (`add_step_kernels`).
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forgeml.models.dense import FeedForward, KVCache, Transformer, apply_rope, rope_cos_sin
from forgeml.serve.prepack import PrepackedLinear, best_time, packed_linear, packer_for

# The fewest keys a graph attends over: shorter requests share one graph.
MIN_KV_BUCKET = 64
# Timed steps of each path when probing a bucket (the fastest counts).
PROBE_STEPS = 3
# A compiled-step-only copy of a linear's weight is kept where it takes at most this fraction
# of the eager step's time for that linear (a copy costs the weight's memory again, and a
# small gain could be timing noise on a loaded machine), timed as the fastest of this many.
STEP_KERNEL_GAIN = 0.8
STEP_KERNEL_REPEATS = 5


def bucket(n: int, smallest: int, largest: int) -> int:
    """The smallest power of two >= n (at least `smallest`), capped at `largest`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, largest)


def logits_close(ours: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> bool:
    """Compiled logits [B, V] within floating-point tolerance of the eager step's.

    A fused graph rounds at other places than eager code (a bf16 product feeding an add
    stays in fp32 registers; a fused reduction sums in another order), so equality is
    bounded by the model dtype's resolution at the logits' scale, not bitwise.
    """
    if not torch.isfinite(ours).all():
        return False
    scale = reference.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    return bool(((ours - reference).abs() <= TOLERANCE[dtype] * scale).all())


# The compiled logits' largest difference allowed, relative to a row's largest logit (at
# least 1): a few units in the last place of the weights' dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4 * 2.0**-8, torch.float16: 4 * 2.0**-11}


# A prepacked linear (`forgeml.serve.prepack.packed_linear`) as one opaque op for inductor,
# which lowers oneDNN's and MKL's packed linears only for weights it froze itself.
prepacked_linear = torch.library.custom_op(
    "forgeml::prepacked_linear", packed_linear, mutates_args=()
)


@prepacked_linear.register_fake
def _(x, packed, weight, bias, library, max_rows):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` as the eager step computes it: through the prepacked copy where the
    engine's probe chose it for this row count (a static choice inside a graph)."""
    rows = x.numel() // module.in_features
    chosen = getattr(module, "_step_kernels", {}).get(rows)
    if chosen is not None:
        return _apply_step_kernel(module, chosen, x)
    if type(module) is PrepackedLinear and 0 < rows <= module.max_rows:
        if module._use_packed[rows - 1] and module._packed is not None:
            return prepacked_linear(
                x, module._packed, module.weight, module.bias, module._packer.name,
                module.max_rows,
            )  # fmt: skip
        return F.linear(x, module.weight, module.bias)
    if type(module) in (nn.Linear, PrepackedLinear):
        return F.linear(x, module.weight, module.bias)
    return module(x)


def decode_step(
    model: Transformer,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    kv_len: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`model.decode_rows` on cache rows 0..B-1 with attention over the first `kv_len` keys.

    The same arithmetic as the dense model's blocks, written for a fixed shape: the new keys
    and values go into the whole cache [L, rows, kv_heads, max_len, D] with one scatter
    (a write through a sliced view makes a compiled graph copy the whole cache back).
    `rope` holds `rope_cos_sin` of every cache position: a graph then gathers each row's
    rotary factors instead of recomputing their powers and cosines wherever it inlines them
    (inductor repeats the query's rotation for every key it scores).
    """
    cfg = model.cfg
    rows, hd = tokens.shape[0], cfg.dim // cfg.n_heads
    n_heads, n_kv = cfg.n_heads, cfg.n_kv_heads
    if rope is None:
        cos, sin = rope_cos_sin(positions, hd, cfg.rope_theta)
    else:
        cos, sin = rope[0][positions], rope[1][positions]
    keys = torch.arange(kv_len, device=tokens.device)[None, :]
    hidden = keys > positions[:, None]
    if cfg.sliding_window is not None:
        hidden = hidden | (keys <= positions[:, None] - cfg.sliding_window)
    mask = torch.zeros(hidden.shape, dtype=cache_k.dtype, device=tokens.device)
    mask = mask.masked_fill(hidden, float("-inf"))[:, None, None, :]
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    row = torch.arange(rows, device=tokens.device)[:, None]
    head = torch.arange(n_kv, device=tokens.device)[None, :]
    h = model.tok_embeddings(tokens[:, None])
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        qkv = _linear(attn.wqkv, layer.attention_norm(h)).view(rows, 1, n_heads + 2 * n_kv, hd)
        qk = apply_rope(qkv[:, :, : n_heads + n_kv], cos, sin).transpose(1, 2)
        q, k = qk.split([n_heads, n_kv], dim=1)
        v = qkv[:, :, n_heads + n_kv :].transpose(1, 2)
        at = (torch.full_like(row, i), row, head, positions[:, None])
        cache_k.index_put_(at, k[:, :, 0].to(cache_k.dtype))
        cache_v.index_put_(at, v[:, :, 0].to(cache_v.dtype))
        out = decode_attention(
            q, cache_k[i, :rows, :, :kv_len], cache_v[i, :rows, :, :kv_len], mask
        ).to(q.dtype)
        h = h + _linear(attn.wo, out.transpose(1, 2).reshape(rows, 1, n_heads * hd))
        ffn = layer.feed_forward
        gate, up = _linear(ffn.w13, layer.ffn_norm(h)).split(ffn.hidden, dim=-1)
        h = h + _linear(ffn.w2, F.silu(gate) * up)
    return _linear(model.output, model.norm(h)).float()[:, 0]


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of one query per row, q [B, H, 1, D] over k, v [B, KVH, T, D]
    (grouped-query), in fp32, written as products and sums: inductor fuses them into two
    reductions over the cache, where SDPA's CPU flash kernel, tiled for long queries, costs
    several times the arithmetic at one query."""
    rows, n_heads, _, hd = q.shape
    n_kv = k.shape[1]
    q = q.float().view(rows, n_kv, n_heads // n_kv, 1, hd) * hd**-0.5
    scores = (q * k.float()[:, :, None]).sum(-1) + mask.float()[:, :, None, 0]
    probs = torch.softmax(scores, dim=-1)
    out = (probs[..., None] * v.float()[:, :, None]).sum(-2)
    return out.view(rows, n_heads, 1, hd)


def compilable(model: nn.Module) -> bool:
    """Whether `decode_step` computes this model's step: a dense decoder (MoE routing has
    data-dependent shapes, so MoE models keep the eager step)."""
    return isinstance(model, Transformer) and all(
        type(layer.feed_forward) is FeedForward for layer in model.layers
    )


def add_step_kernels(model: nn.Module, max_rows: int) -> int:
    """Give the model's CPU linears copies of their weights for the compiled step only, at
    the row buckets where multiplying by one is within the dtype's tolerance of `F.linear`
    and faster than the eager step's kernel, which must be bitwise `F.linear`: the weight
    transposed (a plain `mm`), packed by oneDNN for `max_rows` rows, or by MKL for one row
    (MKL's packed product runs only at the row count it was packed for). Return how many
    linears got one; each copy kept costs the weight's memory again. Every linear gets
    `_step_kernels` ({rows: (library, copy, packed_rows)}, often empty): one structure."""
    rows_timed = sorted({bucket(n, 1, max_rows) for n in range(1, max_rows + 1)})
    added = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        module._step_kernels = {}
        if module.weight.device.type == "cpu" and module.weight.is_floating_point():
            module._step_kernels = _faster_rows(module, _candidates(module, max_rows), rows_timed)
            added += bool(module._step_kernels)
    return added


def _candidates(module: nn.Linear, max_rows: int) -> list[tuple[str, torch.Tensor, int]]:
    """The copies of a linear's weight a compiled step may multiply by instead of the eager
    step's kernel: (library, copy, rows it was packed for)."""
    w = module.weight.detach()
    own = module._packer.name if type(module) is PrepackedLinear and module._packer else None
    found = [("transposed", w.t().contiguous(), 0)]
    for library, rows in (("onednn", max_rows), ("mkl", 1)):
        packer = packer_for(torch.float32 if library == "mkl" else torch.bfloat16)
        if packer is None or packer.name != library or (library, rows) == (own, max_rows):
            continue
        try:
            found.append((library, packer.pack(w, rows), rows))
        except RuntimeError:  # a dtype or CPU the library does not pack
            continue
    return found


def _apply_step_kernel(
    module: nn.Linear, kernel: tuple[str, torch.Tensor, int], x: torch.Tensor
) -> torch.Tensor:
    """`F.linear(x, module.weight, module.bias)` through one of `_candidates`."""
    library, copy, packed_rows = kernel
    if library == "transposed":
        out = torch.mm(x.reshape(-1, module.in_features), copy).view(*x.shape[:-1], -1)
        return out if module.bias is None else out + module.bias
    return prepacked_linear(x, copy, module.weight, module.bias, library, packed_rows)


@torch.inference_mode()
def _faster_rows(
    module: nn.Linear, candidates: list[tuple[str, torch.Tensor, int]], rows_timed: list[int]
) -> dict[int, tuple[str, torch.Tensor, int]]:
    """{rows: the fastest candidate} at the row counts where one is close and faster."""
    probe = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    chosen = {}
    for rows in rows_timed:
        x = torch.randn(rows, module.in_features, generator=probe).to(module.weight.dtype)
        reference = _linear(module, x)
        best = STEP_KERNEL_GAIN * _hot(functools.partial(_linear, module, x))
        for kernel in candidates:
            if kernel[0] == "mkl" and kernel[2] != rows:
                continue  # MKL multiplies by its packed copy only at the rows it packed for
            ours = functools.partial(_apply_step_kernel, module, kernel, x)
            close = logits_close(ours().float(), reference.float(), module.weight.dtype)
            seconds = _hot(ours) if close else float("inf")
            if seconds < best:
                best, chosen[rows] = seconds, kernel
    return chosen


def _repack_step_kernels(model: nn.Module) -> None:
    """Make the step kernels' copies again from the current weights (the same choices)."""
    for module in model.modules():
        kernels = getattr(module, "_step_kernels", {})
        fresh: dict[tuple[str, int], torch.Tensor] = {}  # one copy per (library, rows)
        for rows, (library, _, packed_rows) in kernels.items():
            if (library, packed_rows) not in fresh:
                fresh[library, packed_rows] = _copy_for(module, library, packed_rows)
            kernels[rows] = (library, fresh[library, packed_rows], packed_rows)


def _copy_for(module: nn.Linear, library: str, packed_rows: int) -> torch.Tensor:
    w = module.weight.detach()
    if library == "transposed":
        return w.t().contiguous()
    return packer_for(torch.float32 if library == "mkl" else torch.bfloat16).pack(w, packed_rows)


def _hot(fn: Callable[[], torch.Tensor]) -> float:
    fn()  # the library builds its kernel for the shape
    return best_time(fn, STEP_KERNEL_REPEATS)


@dataclass
class _Bucket:
    """One (rows, keys) bucket: "compiling" (in the background), "compiled" (not yet
    probed), "fast" (the graph is used), "eager" (the probe or the compile kept eager)."""

    state: str
    compile_seconds: float = 0.0
    verdict: str = ""


class CompiledDecodeStep:
    """Per-bucket compiled decode steps for one dense model and its kv cache.

    `__call__(tokens, positions)` returns the logits of the n live rows (cache rows
    0..n-1), or None where the engine's eager step must run. The first step in a new bucket
    queues its compile on a background thread and runs eagerly, so no request waits for a
    compile; at most `max_graphs` buckets compile over the object's life (later ones stay
    eager). The first step after a compile probes it on that step's live inputs: compiled and
    eager logits must agree within `logits_close`, and the compiled step must take less CPU
    time, or the bucket stays eager. `eager(tokens, positions, rows_cache)` is the engine's
    eager step on n rows. `background=False` compiles in the calling thread instead.
    Before its first compile it chooses the graphs' own packed linears (`add_step_kernels`:
    some fp32 linears get a oneDNN copy, which costs their weights' memory again). A probed
    graph runs without dynamo's guard checks; a weight change (seen by each parameter's
    version and storage) repacks those copies and sends every bucket back to a probe, which
    runs them again.
    """

    def __init__(
        self,
        model: Transformer,
        cache: KVCache,
        eager: Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor],
        *,
        max_graphs: int = 8,
        min_kv: int = MIN_KV_BUCKET,
        background: bool = True,
    ) -> None:
        self.model, self.cache, self.eager = model, cache, eager
        self.max_graphs, self.min_kv = max_graphs, min_kv
        self.max_rows = cache.k.shape[1]
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        # Walking the module tree every step would cost a small model's step ~2%: the
        # parameters are listed once (the engine changes weights in place, or moves them).
        self._params = list(model.parameters())
        self._weights = _weights_key(self._params)
        self._graphs: dict[tuple[int, int], Callable[..., torch.Tensor]] = {}
        cfg = model.cfg
        positions = torch.arange(cache.max_len, device=cache.k.device)
        self._rope = rope_cos_sin(positions, cfg.dim // cfg.n_heads, cfg.rope_theta)
        self._queue: queue.SimpleQueue[tuple[int, int] | None] | None = None
        self.step_kernels: int | None = None  # linears given a step-only copy, once chosen
        if not background:
            self.step_kernels = add_step_kernels(model, self.max_rows)
        else:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._compile_loop, name="forgeml-compile", daemon=True
            )
            self._thread.start()

    def bucket_of(self, n: int, kv_len: int) -> tuple[int, int]:
        """The (rows, keys) graph that steps n rows whose longest holds kv_len keys."""
        return bucket(n, 1, self.max_rows), bucket(kv_len, self.min_kv, self.cache.max_len)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no bucket is compiling; False if `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(b.state == "compiling" for b in list(self.buckets.values())):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        n = tokens.shape[0]
        key = self.bucket_of(n, int(positions.max()) + 1)
        weights = _weights_key(self._params)
        if weights != self._weights:  # merged LoRA, reloaded weights: re-probe every bucket
            for found in self.buckets.values():
                if found.state in ("fast", "eager") and found.compile_seconds > 0:
                    found.state = "compiled"
            self._weights = weights
            _repack_step_kernels(self.model)
        found = self.buckets.get(key)
        if found is None:
            if len(self.buckets) >= self.max_graphs:
                self.buckets[key] = _Bucket("eager", verdict="graph budget spent")
                return None
            self.buckets[key] = _Bucket("compiling")
            if self._queue is None:
                self._compile(key)
                return self._probe(key, tokens, positions)
            self._queue.put(key)
            return None
        if found.state == "compiled":
            return self._probe(key, tokens, positions)
        if found.state != "fast":
            return None
        return self._run(key, tokens, positions, self.cache.k, self.cache.v)

    def _run(
        self,
        key: tuple[int, int],
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        guards: bool | None = None,
    ) -> torch.Tensor:
        """The bucket's graph on n rows padded to its row count: the extra rows decode
        token 0 at position 0 of free cache rows (their next prefill overwrites them).
        Called in inference mode: the row inputs are always fresh inference tensors, the
        caches never (dynamo's guards tell them apart, and would compile twice). Dynamo's
        guards run unless the bucket was probed fast (`guards` overrides)."""
        rows, kv_len = key
        n = tokens.shape[0]
        tokens = F.pad(tokens, (0, rows - n))
        positions = F.pad(positions, (0, rows - n))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _compiled_copy(decode_step, f"{rows}x{kv_len}")
        args = (self.model, tokens, positions, cache_k, cache_v, kv_len, self._rope)
        if guards is None:
            found = self.buckets.get(key)
            guards = found is None or found.state != "fast"
        if guards:
            return graph(*args)[:n]
        # A probed graph runs without dynamo's guards (a check of every module attribute it
        # read, a large part of a small model's step): what they guard cannot change since,
        # a weight change sends the bucket back to a probe, which runs them again. Dynamo
        # refuses (before running anything) where the graph has not run guarded since its
        # compile: then once more with guards.
        try:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return graph(*args)[:n]
        except RuntimeError as exc:
            if "skip_guard_eval_unsafe" not in str(exc):
                raise
        return graph(*args)[:n]

    def _compile_loop(self) -> None:
        torch.set_num_threads(1)  # the engine's thread keeps the other cores
        # Before any graph exists: graphs are traced with the step kernels they read.
        self.step_kernels = add_step_kernels(self.model, self.max_rows)
        while (key := self._queue.get()) is not None:
            self._compile(key)

    def _compile(self, key: tuple[int, int]) -> None:
        """Compile a bucket's graph by running it once on a scratch cache of the engine
        cache's shape (untouched pages of it are never made resident)."""
        rows = key[0]
        scratch_k, scratch_v = torch.empty_like(self.cache.k), torch.empty_like(self.cache.v)
        zeros = torch.zeros(rows, dtype=torch.long, device=self.cache.k.device)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                self._run(key, zeros, zeros, scratch_k, scratch_v)
        except Exception as exc:  # a model or torch build inductor cannot compile
            self.buckets[key] = _Bucket("eager", verdict=f"compile failed: {exc!r:.300}")
            return
        self.buckets[key] = _Bucket("compiled", time.perf_counter() - started)

    def _probe(
        self, key: tuple[int, int], tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Compare a compiled bucket with the eager step on live inputs and keep the faster
        of the two if their logits agree; return the eager step's logits (the reference)."""
        n = tokens.shape[0]
        live = KVCache(self.cache.k[:, :n], self.cache.v[:, :n])

        def compiled() -> torch.Tensor:
            return self._run(key, tokens, positions, self.cache.k, self.cache.v)

        # Eager first: it repacks a changed weight before the graph reads the packed copy.
        reference = self.eager(tokens, positions, live)
        ours = compiled()
        eager_seconds = _fastest(lambda: self.eager(tokens, positions, live))
        ours_seconds = _fastest(compiled)
        found = self.buckets[key]
        timing = f"compiled {ours_seconds * 1e3:.2f} ms, eager {eager_seconds * 1e3:.2f} ms"
        if not logits_close(ours, reference, self.cache.k.dtype):
            found.state, found.verdict = "eager", f"logits differ ({timing})"
        elif ours_seconds >= eager_seconds:
            found.state, found.verdict = "eager", f"not faster ({timing})"
        else:
            found.state, found.verdict = "fast", timing
        self.eager(tokens, positions, live)  # leave the eager step's keys and values cached
        return reference


def _compiled_copy(fn: Callable, tag: str) -> Callable:
    """`torch.compile` of a copy of `fn` with its own code object: dynamo keeps compiled
    graphs per code object and checks each one's guards in turn on every call, so one code
    object per bucket keeps that check to a single graph (and clear of the recompile limit)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, dynamic=False, fullgraph=True)


def _fastest(fn: Callable[[], torch.Tensor]) -> float:
    return best_time(fn, PROBE_STEPS, time.thread_time)  # this thread's CPU time


def _weights_key(params: list[nn.Parameter]) -> tuple:
    """Changes when a weight is written in place (its version) or moved (`.to`: its storage)."""
    return tuple((p.data_ptr(), p._version) for p in params)
