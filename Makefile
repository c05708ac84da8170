# Two commands: `make demo` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: demo test lint bench bench-compare clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,dask]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rapport demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The bench extra (dlt, pyinstrument) is installed on first use, pinned like the rest.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# make bench BENCH_ARGS="--messages 100k --profile"
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# A change's own effect, from alternating fresh-process builds of BASE and this tree:
# make bench-compare BASE=main~1 COMPARE_ARGS="--messages 1m --pairs 6 --incremental"
BASE ?= HEAD
bench-compare: $(STAMP)
	$(BIN)/python -m benchmarks.compare $(BASE) $(COMPARE_ARGS)

clean:
	rm -rf data bench-results .pytest_cache .ruff_cache
