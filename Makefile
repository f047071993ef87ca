# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv from this repo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/.hf_home
export TRANSFORMERS_VERBOSITY := error

.PHONY: demo test bench bench-train bench-pref clean

$(BIN)/surgery: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: otherwise pip picks a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/surgery
	$(BIN)/surgery world demo --specs merges

test: $(BIN)/surgery
	bash .ci/test

bench: $(BIN)/surgery
	$(BIN)/python bench/run.py

bench-train: $(BIN)/surgery
	$(BIN)/python bench/train.py

bench-pref: $(BIN)/surgery
	$(BIN)/python bench/train_preference.py

clean:
	rm -rf demo .hf_home
