# Every target bootstraps .venv itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo serve lint bench soak clean redis-server clients-sdk clients-demo

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

# The SDK reference clients: the Python SDK in its own venv (it pins websockets<16),
# the JS SDK when npm exists (otherwise its test is skipped with the reason).
PY_SDK := examples/clients/python/.venv
$(PY_SDK)/.installed: examples/clients/python/requirements.txt
	$(PYTHON) -m venv $(PY_SDK)
	$(PY_SDK)/bin/pip install --quiet -r examples/clients/python/requirements.txt
	touch $@

clients-sdk: $(PY_SDK)/.installed
	@if command -v npm >/dev/null 2>&1; then \
	  cd examples/clients/js && npm install --no-audit --no-fund --silent; \
	else echo "npm not found: the JS SDK client test will be skipped"; fi

clients-demo: $(STAMP) clients-sdk
	$(BIN)/rtmsim clients scenarios/client-faults.toml \
	  --cmd "$(PY_SDK)/bin/python examples/clients/python/client.py"

test: $(STAMP) redis-server clients-sdk
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The main job on the embedded defaults: one scenario end to end, summary + report.
demo: $(STAMP)
	$(BIN)/rtmsim run scenarios/default.toml

serve: $(STAMP)
	$(BIN)/rtmsim serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP) redis-server
	$(BIN)/python -m bench fanout --seconds 5 --json
	$(BIN)/python -m bench fanout --seconds 5 --faults armed --json
	$(BIN)/python -m bench reqack --seconds 5 --json
	$(BIN)/python -m bench connections --n 15000 --json
	$(BIN)/python -m bench redis --seconds 5 --json
	$(BIN)/python -m bench swarm --seconds 10 --json

# Not part of `bench`: ten minutes of churning load, then are fds and tasks back?
soak: $(STAMP)
	$(BIN)/python -m bench soak --minutes 10 --json

clean:
	rm -rf $(VENV)
