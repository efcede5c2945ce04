# forgeml — the two commands: `make quickstart` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.forgeml-installed
QS := build/quickstart
DEMO := build/demo
PYTEST_FLAGS ?= -q

.PHONY: acme-data quickstart quickstart-mm demo test test-slow test-all lint format bench clean-quickstart

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; anything that depends on torch then finds it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# OCR of scans at ingest: Debian's tesseract-ocr when we may install it, else a hint.
	command -v tesseract >/dev/null || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq tesseract-ocr >/dev/null; } \
	  || echo "tesseract-ocr not installed: scanned PDFs and page images will not be read" >&2
	touch $(STAMP)

# The demo domain's corpus and its chat, preference and RL data (build/acme-*), shared by both.
acme-data: $(STAMP)
	$(BIN)/python examples/acme/generate.py --out build/acme-corpus --seed 0
	$(BIN)/python examples/acme/make_data.py sft --out build/acme-sft --seed 0
	$(BIN)/python examples/acme/make_data.py prefs --out build/acme-prefs.jsonl --snippets --seed 0
	$(BIN)/python examples/acme/make_data.py rl --out build/acme-rl --snippets

# Every stage, cut to finish within 10 minutes on 2 cores (install excluded).
quickstart: acme-data
	$(BIN)/forgeml init $(QS)
	$(BIN)/forgeml -w $(QS) pipeline run recipes/quickstart.yaml --json $(QS)/summary.json

# The multimodal demo (optional): ACME page scans, diagrams and spoken procedures (espeak-ng),
# a vision+audio model trained from scratch, held-out CER / accuracy / WER before and after.
quickstart-mm: $(STAMP)
	command -v espeak-ng >/dev/null || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; } \
	  || echo "espeak-ng not installed: the speech part is skipped" >&2
	$(BIN)/python examples/acme/mm_demo.py --out build/acme-mm-demo

# The full demo: post-training long enough for DPO and GRPO to lift their evals.
demo: acme-data
	$(BIN)/forgeml init $(DEMO)
	$(BIN)/forgeml -w $(DEMO) pipeline run recipes/demo.yaml --json $(DEMO)/summary.json

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_FLAGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_FLAGS)

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean-quickstart:
	rm -rf $(QS) $(DEMO) build/acme-corpus build/acme-sft build/acme-prefs.jsonl build/acme-rl
