# Every target builds the virtual environment it needs: a fresh clone runs `make demo` or `make test` directly.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# HistGradientBoosting's OpenMP threads spin-wait by default; on a busy 2-core machine that made training 10x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test bench fuzz starter train-real clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# torch first, pinned: any other version resolves to a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/carelens demo --out runs/demo

# One test process per core (pytest-xdist), each test module whole on one of them so that its fixtures are made once,
# the modules handed out in file order: xdist's default, the modules with most tests first, left the long ones (the
# README walkthrough, the service) to run alone at the end (725 s against 670 s on 2 cores).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

# The property tests at 10,000 examples each (the whole-run property at 200) and the fault tests at 5 seeded kill
# points per stage of the nightly job. Hours on 2 cores; FUZZ_EXAMPLES=1000 for a quicker pass.
FUZZ_EXAMPLES ?= 10000
fuzz: $(VENV)/.installed
	CARELENS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CARELENS_KILL_POINTS=5 $(BIN)/python -m pytest -q -m "slow or not slow" \
		-k "property or killed" tests/test_properties.py tests/test_service_properties.py tests/test_redaction.py \
		tests/test_output_encoding.py tests/test_paths.py tests/test_faults.py

bench: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow -s tests/benchmarks tests

# The starter transcript model from permissively licensed text only (VADER's MIT-licensed rated sentences, fetched
# from PyPI and checked against their pin; the empathy rules), the encoder fine-tuned: about 20 minutes on 2 cores.
# `make demo` builds the quick one (heads on the frozen encoder) when the registry has none.
starter: $(VENV)/.installed
	$(BIN)/carelens train starter --mode finetune --out registry

# Fine-tunes the transcript model on the public tweets and EPITOME pairs (the agent turn alone, each head pooled with
# its TF-IDF floor): about 30 minutes on 2 free CPU cores,
# and never more than the 55-minute budget (it then keeps its best validated state).
train-real: $(VENV)/.installed
	$(BIN)/carelens train transcripts --mode finetune --sentiment-data $(SHARED)/data/sentiment \
		--empathy-data $(SHARED)/data/empathy --epochs 3 --empathy-repeats 4 --lr 8e-5 --max-length 256 \
		--batch-size 32 --seed 13 --time-budget 55 --out registry

clean:
	rm -rf $(VENV) registry runs
