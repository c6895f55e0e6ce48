# PlayGuard: the two set-up commands of the README are `make demo` and `make test`.
# Each creates the virtualenv (.venv) and installs the system packages it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench system-deps clean

demo: $(VENV)/.installed
	$(BIN)/playguard demo

test: $(VENV)/.installed system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(VENV)/.installed system-deps
	$(BIN)/python bench/stream_throughput.py
	$(BIN)/python bench/detectors.py
	$(BIN)/python bench/audio_qc.py

system-deps:
	@bash scripts/install-system-deps

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) out .pytest_cache
