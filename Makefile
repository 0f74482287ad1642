# Set-up to result in one command each. `make test` builds .venv from a bare Python 3.11 and runs every check.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU build lies on this project's machines; on a GPU machine pass your own, e.g. TORCH='torch==2.13.0'
# with the index URL of your CUDA build in PIP_EXTRA_INDEX_URL, or install torch into .venv yourself first.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo demo-realistic test lint typecheck pytest browser clean mutate docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: a bare `torch` requirement with nothing installed would pull a multi-GB CUDA build
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# the main job: the built-in demo audit (report in runs/demo/report.html)
demo: $(VENV)/.installed
	$(BIN)/diffmia demo

# the realistic built-in audit: LoRA adapters over 200 members (report in runs/demo-realistic/report.html)
demo-realistic: $(VENV)/.installed
	$(BIN)/diffmia demo --preset realistic

# the report's browser test opens report.html in Debian's headless Chromium; install it where we can
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
		  apt-get install -y -q chromium >/dev/null; }; }; } || \
		echo "make: could not install chromium (needs apt-get as root); the browser test will fail without it"

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy src

pytest: $(VENV)/.installed browser
	$(BIN)/pytest

test: lint typecheck pytest

# the generated references: every configuration key (docs/config.md) and every command (docs/cli.md); the tests
# check that both files are what the code gives now
docs: $(VENV)/.installed
	$(BIN)/diffmia config reference --out docs/config.md
	$(BIN)/python -m diffmia.clidoc --out docs/cli.md

# mutation testing of the result-making modules against their own fast tests (not part of `make test`; one worker,
# an hour or more on 2 cores): `make mutate`, or `make mutate GROUPS="metrics distances"`.
MUTMUT ?= mutmut==3.8.1
mutate: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(MUTMUT)"
	$(BIN)/python benchmarks/mutate.py $(GROUPS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .mutmut mutants
