# avtta: `make demo` (the main job) and `make test` (the whole suite) set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Ray must reach only loopback here: run Ray-using commands in a private network namespace when possible.
NETNS  := $(shell if [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then echo "unshare -n sh -c 'ip link set lo up &&"; fi)
NETEND := $(if $(NETNS),',)

.PHONY: venv test test-fast demo demo-quick bench lint clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The whole suite (slow tests included), as CI runs it.
test: venv
	$(NETNS) RAY_AUTH_MODE=disabled $(PY) -m pytest -q --timeout=900 $(PYTEST_ARGS)$(NETEND)

# Everything but the tests marked slow.
test-fast: venv
	$(NETNS) RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m 'not slow' --timeout=600 $(PYTEST_ARGS)$(NETEND)

demo: venv
	$(NETNS) $(VENV)/bin/avtta demo $(DEMO_ARGS)$(NETEND)

demo-quick: venv
	$(NETNS) $(VENV)/bin/avtta demo --quick $(DEMO_ARGS)$(NETEND)

bench: venv
	$(NETNS) $(PY) benchmarks/run_all.py $(BENCH_ARGS)$(NETEND)

lint: venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
