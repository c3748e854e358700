# Two commands: `make run` (serve on the embedded defaults) and `make test` (the whole suite).
# Both create .venv, install the requirements (test: requirements-dev.txt too) and build the sandbox
# image when missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-crun test-gvisor build lint bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: $(VENV)/.installed
	$(PY) build.py

run: build
	$(PY) center.py

test: build $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

SANDBOX_SUITES := tests/test_attacks.py tests/test_agent.py tests/test_isolation.py tests/test_hostile_programs.py \
                  tests/test_kernel_surface.py tests/test_sessions.py tests/test_agent_sessions.py tests/test_streaming.py

# The attack suite again with sandboxes under crun, the faster OCI runtime (registered with Docker as crun).
test-crun: build $(VENV)/.installed-dev
	TEST_SANDBOX_RUNTIME=crun $(PY) -m pytest $(SANDBOX_SUITES)

# The attack suite again with sandboxes under gVisor (needs the runsc runtime registered with Docker).
test-gvisor: build $(VENV)/.installed-dev
	TEST_SANDBOX_RUNTIME=runsc $(PY) -m pytest $(SANDBOX_SUITES)

# Against `docker run --rm` (runc): the center under runc (the default), then under crun if Docker has it.
bench: build
	$(PY) bench/latency.py
	if docker info --format '{{json .Runtimes}}' | grep -q '"crun"'; then $(PY) bench/latency.py --runtime crun; fi
	$(PY) bench/sessions.py
	$(PY) bench/streaming.py

clean:
	rm -rf $(VENV) .build .pytest_cache
