# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser run test test-quick bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-bundled.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-bundled.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The browser test drives Debian's Chromium; install it when missing (needs root, as in CI).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium; the browser test will be skipped"

run: setup
	$(PY) app.py

test: setup browser
	$(PY) -m pytest -q

test-quick: setup
	$(PY) -m pytest -q -m "not slow"

# Every benchmark, peers included (installed from requirements-bench.txt into the same venv): writes bench/RESULTS.md.
bench: setup
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/run.py

clean:
	rm -rf $(VENV)
