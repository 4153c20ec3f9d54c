# Every target bootstraps .venv itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo serve lint bench clean redis-server

# The Redis tests start their own private redis-server; install Debian's when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing Debian's package (apt-get)"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq redis-server >/dev/null; \
	  else echo "no apt-get here: install redis-server yourself" >&2; exit 1; fi; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) redis-server
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The main job on the embedded defaults: one scenario end to end, summary + report.
demo: $(STAMP)
	$(BIN)/rtmsim run scenarios/default.toml

serve: $(STAMP)
	$(BIN)/rtmsim serve

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench fanout --seconds 5 --json
	$(BIN)/python -m bench reqack --seconds 5 --json
	$(BIN)/python -m bench connections --n 15000 --json

clean:
	rm -rf $(VENV)
