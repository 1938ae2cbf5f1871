# README's two commands: `make demo` and `make test`.  Both create .venv first.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.bootstrapped: pyproject.toml constraints.txt tools/bootstrap.sh tools/lava_wheels.py
	tools/bootstrap.sh

.PHONY: demo test check bootstrap
bootstrap: $(VENV)/.bootstrapped

demo: $(VENV)/.bootstrapped
	$(VENV)/bin/ecmt demo

# The NIR consumer libraries (snnTorch, Norse, sinabs) run ecmt's files in their own
# environments (tools/nir_consumers.sh says why); the script returns at once when they are current.
# SANA-FE (the cross-check of hw_sim's loihi-sanafe profile) likewise runs in .cache/sanafe.
test: $(VENV)/.bootstrapped
	tools/nir_consumers.sh
	tools/sanafe_env.sh
	$(PY) -m pytest -q

# The fast tier, for a developer's loop (docs/install.md): the tests not marked slow, without
# building the NIR consumer and SANA-FE environments (tests that need them skip).
check: $(VENV)/.bootstrapped
	$(PY) -m pytest -q -m "not slow"
