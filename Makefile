# make demo   set everything up and run the example service's tests on embedded services
# make test   run the test suite (sets up first if needed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench typecheck lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev,migrate]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/isolated-env doctor
	$(BIN)/python examples/run_demo.py

test: $(STAMP)
	$(BIN)/pytest -n 2 -p no:cacheprovider

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict tests/typing/user_test_file.py

lint: $(STAMP)
	$(BIN)/ruff check isolated_env tests examples benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache
