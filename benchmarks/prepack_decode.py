"""A decode step with and without the engine's prepacked linears, in one process.

The PEERS.md tiny Mistral (random weights) in the given dtype; `Transformer.decode_rows` on
`--rows` rows at position 96, once on the plain model and once on a copy whose linears are
`PrepackedLinear`s (`forgeml.serve.prepack`: oneDNN for bf16, MKL for fp32, each row count
packed only where bitwise equal to `F.linear` and faster). Rounds alternate the two; the
result is the median step time of each and their ratio. Both produce the same logits, checked.

    .venv/bin/python benchmarks/prepack_decode.py --dtype fp32 --rows 16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import CFG  # noqa: E402

from forgeml.models.dense import Transformer  # noqa: E402
from forgeml.serve.prepack import prepack_linears  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--rows", type=int, default=16, help="rows decoded together")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    plain = Transformer(CFG).to(dtype).eval()
    packed = copy.deepcopy(plain)
    n_packed = prepack_linears(packed, max_rows=args.rows)
    used = sum(
        m._use_packed[args.rows - 1] for m in packed.modules() if getattr(m, "_use_packed", ())
    )
    linears = sum(isinstance(m, torch.nn.Linear) for m in packed.modules())
    print(
        f"{args.dtype}, {args.rows} rows: {n_packed} of {linears} linears packed, "
        f"{used} use the packed copy at {args.rows} rows"
    )
    cache = plain.new_kv_cache(args.rows, CFG.max_seq_len)
    tokens = torch.randint(0, CFG.vocab_size, (args.rows,))
    positions = torch.full((args.rows,), 96)
    steps = {
        "plain": lambda: plain.decode_rows(tokens, cache, positions),
        "prepacked": lambda: packed.decode_rows(tokens, cache, positions),
    }
    if not torch.equal(steps["plain"](), steps["prepacked"]()):
        raise SystemExit("the prepacked model's logits differ from the plain model's")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(3):  # warm the caches for this model
                step()
            laps = []
            for _ in range(10):
                start = time.perf_counter()
                step()
                laps.append(time.perf_counter() - start)
            times[name].append(statistics.median(laps))
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(
        f"decode step: plain {med['plain']:.3f} ms, prepacked {med['prepacked']:.3f} ms, "
        f"{med['plain'] / med['prepacked']:.2f}x"
    )


if __name__ == "__main__":
    main()
