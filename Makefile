# Two user-facing targets; each does its own set-up once (.venv), then is fast.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: bench test setup

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/bench run mini
	$(VENV)/bin/bench table paper

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
