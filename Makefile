# README's two commands: `make demo` and `make test`.  Both create .venv first.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.bootstrapped: pyproject.toml constraints.txt tools/bootstrap.sh tools/lava_wheels.py
	tools/bootstrap.sh

.PHONY: demo test bootstrap
bootstrap: $(VENV)/.bootstrapped

demo: $(VENV)/.bootstrapped
	$(VENV)/bin/ecmt demo

test: $(VENV)/.bootstrapped
	$(PY) -m pytest -q
