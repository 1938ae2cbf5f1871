# README's two commands: `make demo` and `make test`.  Both create .venv first.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.bootstrapped: pyproject.toml constraints.txt tools/bootstrap.sh tools/lava_wheels.py
	tools/bootstrap.sh

.PHONY: demo test bootstrap
bootstrap: $(VENV)/.bootstrapped

demo: $(VENV)/.bootstrapped
	$(VENV)/bin/ecmt demo

# The NIR consumer libraries (snnTorch, Norse, sinabs) run ecmt's files in their own
# environments (tools/nir_consumers.sh says why); the script returns at once when they are current.
test: $(VENV)/.bootstrapped
	tools/nir_consumers.sh
	$(PY) -m pytest -q
