# The two commands a user needs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean lint faults bench swarm sim sysdeps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# p2pfs mount's FUSE binding builds against libfuse3-dev (sysdeps installs it where it can); without
	@# it the mount tests skip with their reason
	@$(BIN)/python -m pip install --quiet -e '.[test,mount]' >/dev/null 2>&1 || \
		echo "make: pyfuse3 not built (needs libfuse3-dev and pkg-config): the mount tests will be skipped" >&2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m p2pfs.demo

# System packages for the real-part tests (Redis, Chromium, FUSE): installed where root and apt allow,
# otherwise those tests skip with a one-line reason.
sysdeps:
	-@bash scripts/sysdeps.sh

test: sysdeps $(STAMP)
	$(BIN)/python -m pytest -q

faults: $(STAMP)
	$(BIN)/python -m tests.faults.trials --trials 120 --report docs/RELIABILITY.md

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check p2pfs tests
	$(BIN)/mypy p2pfs

# Benchmarks (never part of `make test`): figures and ratios printed, the table appended to
# bench/RESULTS.md. libtorrent, the yardstick, lives in its own venv so it never touches .venv.
LT_VENV  := bench/.venv-lt
LT_STAMP := $(LT_VENV)/.installed

$(LT_STAMP):
	$(PYTHON) -m venv $(LT_VENV)
	$(LT_VENV)/bin/python -m pip install --quiet libtorrent==2.1.1
	touch $(LT_STAMP)

bench: $(STAMP) $(LT_STAMP)
	$(BIN)/python -m bench.run

# 1 seeder + 8 downloaders in network namespaces, uplinks shaped to 100 Mbit/s (needs root, iproute2, tc tbf)
swarm: $(STAMP) $(LT_STAMP)
	$(BIN)/python -m bench.netswarm

# The swarm simulated (bench/sim): the testbed's cases beside its figures, then N = 100 (no root needed)
sim: $(STAMP)
	$(BIN)/python -m bench.sim.run --quick --blame-max-n 16

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
