# make demo   set everything up and run the example service's tests on embedded services
# make test   run the test suite (sets up first if needed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test clickhouse-suite bench typecheck lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev,migrate,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/isolated-env doctor
	$(BIN)/python examples/run_demo.py

test: $(STAMP)
	$(BIN)/pytest -n 2 -p no:cacheprovider

# clickhouse-connect's own integration suite against the chdb adaptor, compared with
# tests/integrations/clickhouse_connect_expected_failures.txt (its extra packages go to .venv-ccsuite)
clickhouse-suite: $(STAMP)
	$(BIN)/python tests/integrations/clickhouse_connect_suite.py --workers 2

# every benchmarks/bench_*.py, then docs/benchmarks.md (with plots) and README's Measured table from their JSON
bench: $(STAMP)
	$(BIN)/isolated-env bench

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict tests/typing/user_test_file.py

lint: $(STAMP)
	$(BIN)/ruff check isolated_env tests examples benchmarks

clean:
	rm -rf $(VENV) .venv-ccsuite *.egg-info .pytest_cache .mypy_cache
