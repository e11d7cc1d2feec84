# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make demo   - set up, then run the demo clinic end to end
#   make test   - set up, then run the whole test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/bootstrap
	PYTHON=$(PYTHON) bash .ci/bootstrap
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pdata-sync demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .demo .pytest_cache
