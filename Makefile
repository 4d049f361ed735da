# make demo: set everything up, then run the built-in demo.   make test: set everything up, then run the tests.
.PHONY: setup demo test lint format clean

BIN := .venv/bin
# xdist workers: 2 on the 2-core machines CI runs on; override with `make test WORKERS=4`.
WORKERS ?= 2

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/memento demo --out demo-out

test: setup
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf demo-out .pytest_cache .ruff_cache build *.egg-info
