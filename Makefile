# The README's two commands: `make reproduce` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install everything into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch; on a CUDA machine: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: reproduce test setup clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

reproduce: $(VENV)/.installed
	$(PY) -m llmlatent reproduce $(ARGS)

# lint, format and types are part of the suite: a ruff or mypy finding fails `make test` before pytest runs
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy llmlatent
	$(PY) -m pytest -q -rs $(ARGS)

clean-results:
	rm -rf results
