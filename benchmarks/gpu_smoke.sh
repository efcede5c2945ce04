#!/usr/bin/env bash
# GPU readiness in one run, on a CUDA machine, from the repository root: install, the
# GPU-marked tests, a bf16 MFU measurement (benchmarks/mfu.py), a two-minute FSDP pre-training
# of the 125M scale recipe on every visible GPU, serving throughput (the built-in engine's
# benchmark, and vLLM behind the gateway where vLLM is installed); then one summary table.
# A failing step is reported in the table and the next one runs.
#
#   bash benchmarks/gpu_smoke.sh
#   GPU_SMOKE_DRY_RUN=1 bash benchmarks/gpu_smoke.sh   # print each step's command, run none
#
# Settings (environment):
#   GPU_SMOKE_OUT          logs and figures (default build/gpu-smoke)
#   GPU_SMOKE_VENV         the virtual environment to make or use (default .venv-gpu)
#   GPU_SMOKE_SKIP_INSTALL 1: use the environment as it is (machines without an index)
#   GPU_SMOKE_VLLM         1: also install forgeml[vllm] and time vLLM behind the gateway
#   GPU_SMOKE_RECIPE       pre-training recipe (default recipes/scale/mistral-125m.yaml)
#   GPU_SMOKE_SECONDS      pre-training budget in seconds (default 120): the step count is
#                          this budget at the tokens/s the MFU step measured
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN="${GPU_SMOKE_DRY_RUN:-0}"
OUT="${GPU_SMOKE_OUT:-build/gpu-smoke}"
VENV="${GPU_SMOKE_VENV:-.venv-gpu}"
RECIPE="${GPU_SMOKE_RECIPE:-recipes/scale/mistral-125m.yaml}"
SECONDS_BUDGET="${GPU_SMOKE_SECONDS:-120}"
PY="$VENV/bin/python"
FORGEML="$VENV/bin/forgeml"
WS="$OUT/workspace"
mkdir -p "$OUT"

NAMES=() STATUS=() TIMES=() NOTES=()

# step NAME COMMAND...: run COMMAND (its output to $OUT/NAME.log) and record how it went;
# non-zero when it failed or (dry run) did not run, so `step ... && note ...` notes results only.
step() {
  local name="$1"
  shift
  local slug="${name// /-}"
  if [ "$DRY_RUN" = "1" ]; then
    echo "[dry-run] $name: $*"
    NAMES+=("$name") STATUS+=("dry-run") TIMES+=("-") NOTES+=("")
    return 1
  fi
  echo "== $name: $*"
  local start=$SECONDS rc=0
  "$@" >"$OUT/$slug.log" 2>&1 || rc=$?
  NAMES+=("$name") TIMES+=("$((SECONDS - start))") NOTES+=("")
  if [ "$rc" -eq 0 ]; then STATUS+=("ok"); else STATUS+=("FAIL (exit $rc)"); fi
  tail -n 3 "$OUT/$slug.log"
  return "$rc"
}

note() { NOTES[${#NOTES[@]} - 1]="$1"; }

skip() {
  echo "-- $1: skipped ($2)"
  NAMES+=("$1") STATUS+=("skipped") TIMES+=("-") NOTES+=("$2")
}

# -- 1. install ---------------------------------------------------------------------------
EXTRAS="dev"
[ "${GPU_SMOKE_VLLM:-0}" = "1" ] && EXTRAS="dev,vllm"
if [ "${GPU_SMOKE_SKIP_INSTALL:-0}" = "1" ]; then
  skip "install" "GPU_SMOKE_SKIP_INSTALL=1"
else
  step "install" bash -c "python3 -m venv '$VENV' && '$PY' -m pip install -q --upgrade pip \
    && '$PY' -m pip install -q torch && '$PY' -m pip install -q -e '.[$EXTRAS]'"
fi
if [ "$DRY_RUN" != "1" ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name())" \
    || { echo "no CUDA device visible to $PY: nothing to measure" >&2; exit 1; }
  NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
else
  NGPU=1
fi

# -- 2. the GPU-marked tests ----------------------------------------------------------------
step "gpu tests" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
  && note "$(grep -Eo '[0-9]+ passed' "$OUT/gpu-tests.log" | tail -n 1)"

# -- 3. bf16 MFU of the recipe's model on one GPU -------------------------------------------
if [ -f "$RECIPE" ]; then MFU_MODEL=(--recipe "$RECIPE"); else MFU_MODEL=(--preset 125m); fi
step "mfu" "$PY" benchmarks/mfu.py "${MFU_MODEL[@]}" --dtype bf16 --json "$OUT/mfu.json" \
  && note "$("$PY" -c "import json; r = json.load(open('$OUT/mfu.json')); \
print(f\"MFU {r['mfu']:.3f}: {r['achieved_tflops']:.1f} of {r['peak_tflops']:.0f} TFLOP/s, \
{r['tokens_per_s']:,.0f} tokens/s\")")"

# -- 4. FSDP pre-training of the 125M recipe for about SECONDS_BUDGET seconds ----------------
MODEL=""
if [ ! -f "$RECIPE" ]; then
  skip "fsdp pretrain" "$RECIPE not found (recipes/scale/ not in this checkout)"
else
  STEPS=200
  if [ "$DRY_RUN" != "1" ] && [ -f "$OUT/mfu.json" ]; then
    STEPS="$("$PY" - "$RECIPE" "$OUT/mfu.json" "$SECONDS_BUDGET" <<'PYEOF'
import json, sys
from forgeml.core.config import load_recipe
t = load_recipe(sys.argv[1]).train
tokens_per_gpu_step = t.micro_batch_size * t.seq_len * t.grad_accum_steps
rate = json.load(open(sys.argv[2]))["tokens_per_s"]
print(max(10, int(float(sys.argv[3]) * rate / tokens_per_gpu_step)))
PYEOF
)"
  fi
  step "acme corpus" "$PY" examples/acme/generate.py --out "$OUT/acme-corpus" --seed 0 --quiet
  step "workspace" bash -c "rm -rf '$WS' && '$FORGEML' init '$WS' && '$FORGEML' -w '$WS' \
    data ingest '$OUT/acme-corpus' --name smoke-corpus"
  step "fsdp pretrain" "$FORGEML" -w "$WS" train pretrain "$RECIPE" --data smoke-corpus \
    --nproc-per-node "$NGPU" "train.max_steps=$STEPS" train.strategy=fsdp \
    train.eval_every=100000 train.checkpoint_every=100000 \
    && MODEL="$(grep -Eo 'model model-[0-9a-f]+' "$OUT/fsdp-pretrain.log" | tail -n 1 | cut -d' ' -f2)" \
    && note "$STEPS steps on $NGPU GPU(s): $(grep -Eo 'train loss [0-9.]+' "$OUT/fsdp-pretrain.log" | tail -n 1)"
fi

# -- 5. serving throughput --------------------------------------------------------------------
step "serve throughput" "$PY" benchmarks/serve_throughput.py --quick --dtype bf16 \
  && note "built-in engine: $(grep -Ei 'tokens/s|x ' "$OUT/serve-throughput.log" | tail -n 1)"

if [ "$DRY_RUN" = "1" ] || "$PY" -c "import vllm" 2>/dev/null; then
  if [ "$DRY_RUN" != "1" ] && [ -z "$MODEL" ]; then
    skip "vllm serve" "no pre-trained model to serve"
  else
    step "vllm serve" "$PY" - "$FORGEML" "$WS" "${MODEL:-MODEL}" <<'PYEOF' \
      && note "$(tail -n 1 "$OUT/vllm-serve.log")"
import asyncio, signal, subprocess, sys, time

import httpx
import openai

forgeml, ws, model, port = sys.argv[1], sys.argv[2], sys.argv[3], 8417
gateway = subprocess.Popen(
    [forgeml, "-w", ws, "serve", model, "--engine", "vllm", "--no-auth", "--port", str(port)]
)
url = f"http://127.0.0.1:{port}"


async def one(client, i):
    r = await client.completions.create(
        model=model, prompt=f"ACME manual {i}:", max_tokens=128, temperature=0.8
    )
    return r.usage.completion_tokens


async def load():
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(client, i) for i in range(256))))
    rate = tokens / (time.perf_counter() - start)
    print(f"vLLM behind the gateway: {rate:,.0f} tokens/s (256 requests at once, 128 tokens)")


try:
    deadline = time.monotonic() + 900
    while True:
        assert gateway.poll() is None, "forgeml serve --engine vllm exited"
        assert time.monotonic() < deadline, "the gateway was not up after 900 s"
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    asyncio.run(load())
finally:
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(timeout=120)
PYEOF
  fi
else
  skip "vllm serve" "vllm not installed (GPU_SMOKE_VLLM=1 installs it)"
fi

# -- summary ----------------------------------------------------------------------------------
echo
echo "gpu smoke summary ($(date -u +%Y-%m-%dT%H:%MZ), logs in $OUT)"
printf '%-18s %-16s %6s  %s\n' "step" "status" "s" "result"
for i in "${!NAMES[@]}"; do
  printf '%-18s %-16s %6s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
done
for s in "${STATUS[@]}"; do
  case "$s" in FAIL*) exit 1 ;; esac
done
exit 0
