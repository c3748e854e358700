# Two commands: `make run` (serve on the embedded defaults) and `make test` (the whole suite).
# Both create .venv, install the requirements (test: requirements-dev.txt too) and build the sandbox
# image when missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-crun test-gvisor test-swarm swarm-up swarm-down build lint bench docs clean

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
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest $(PYTEST_ARGS)

SANDBOX_SUITES := tests/test_attacks.py tests/test_agent.py tests/test_isolation.py tests/test_hostile_programs.py \
                  tests/test_kernel_surface.py tests/test_sessions.py tests/test_agent_sessions.py tests/test_streaming.py \
                  tests/test_rich_results.py tests/test_egress.py

# The attack suite again with sandboxes under crun, the faster OCI runtime (registered with Docker as crun).
test-crun: build $(VENV)/.installed-dev
	TEST_SANDBOX_RUNTIME=crun $(PY) -m pytest $(SANDBOX_SUITES)

# The attack suite again with sandboxes under gVisor (needs the runsc runtime registered with Docker).
test-gvisor: build $(VENV)/.installed-dev
	TEST_SANDBOX_RUNTIME=runsc $(PY) -m pytest $(SANDBOX_SUITES)

# The center as a Docker Swarm stack on this node (deploy/swarm/swarm.py): a one-node swarm if none,
# the images built, the stack deployed, ready on CIA_PORT (5000) with CIA_TOKEN (or a token it prints).
# INSTALLED= (empty) skips making .venv when PY names another interpreter (the tests do that).
INSTALLED ?= $(VENV)/.installed
swarm-up: $(INSTALLED)
	$(PY) deploy/swarm/swarm.py up

# The stack removed, with every sandbox its centers started on this node (SWARM_PURGE=1: the database too).
swarm-down: $(INSTALLED)
	$(PY) deploy/swarm/swarm.py down

# The swarm suite: the stack through make swarm-up/down, its front door, a rolling update, a second engine as a
# second node. PYTEST_ARGS=-rP also prints the figures the suite notes (timings, outcome counts).
test-swarm: build $(VENV)/.installed-dev
	TEST_SWARM=1 $(PY) -m pytest tests/test_swarm.py $(PYTEST_ARGS)

# Against `docker run --rm` (runc): the center under runc (the default), then under crun if Docker has it.
bench: build
	$(PY) bench/latency.py
	if docker info --format '{{json .Runtimes}}' | grep -q '"crun"'; then $(PY) bench/latency.py --runtime crun; fi
	$(PY) bench/sessions.py
	$(PY) bench/streaming.py
	$(PY) bench/cpu_per_request.py
	$(PY) bench/rich_results.py

# The documentation site: docs/ built with mkdocs (mkdocs-material, from requirements-dev.txt) into site/,
# offline; --strict fails the build on a broken link between pages.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .build .pytest_cache
