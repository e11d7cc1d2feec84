# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make demo   - set up, then run the demo clinic end to end
#   make test   - set up, then run the whole test suite
# Benchmarks (not tests; each prints its figures):
#   make bench        - pdata-sync against s5cmd, rclone, aws s3 sync on loopback
#                       (bench/compare_tools.py), then on a shaped uplink with and without
#                       a cap (bench/link_use.py)
#   make bench-scale  - 100,000 images in 10,000 patient folders (bench/scale.py)
#   make bench-huge   - peak memory uploading a 1 GB file (bench/huge_file.py)
#   make bench-fleet  - a night of 200 clinics on one Prefect server on PostgreSQL (bench/fleet.py)
#   make bench-datapath - upload data paths side by side against s5cmd (bench/datapath.py)
#   make bench-rehash - the rolling content check's cost per night at 100,000 files (bench/rehash.py)
#   make bench-restore - restore of the demo clinic from S3 alone, against s5cmd (bench/restore.py)
# Dependencies: `make lock` re-resolves requirements.lock from pyproject.toml (after changing
# a dependency there), then reinstalls .venv from it; run `make test` after.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

BENCH_STAMP := .bench-venv/.installed

.PHONY: demo test setup lint clean lock bench bench-setup bench-scale bench-huge bench-fleet bench-datapath bench-rehash bench-restore

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock .ci/bootstrap pdata_sync/viewer/ohif.py
	PYTHON=$(PYTHON) bash .ci/bootstrap
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pdata-sync demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench-setup: $(STAMP) $(BENCH_STAMP)

$(BENCH_STAMP): bench/requirements.txt .ci/bench-setup
	PYTHON=$(PYTHON) bash .ci/bench-setup
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(VENV)/bin/python bench/compare_tools.py
	$(VENV)/bin/python bench/link_use.py

bench-scale: $(STAMP) $(BENCH_STAMP)
	$(VENV)/bin/python bench/scale.py

bench-huge: $(STAMP)
	$(VENV)/bin/python bench/huge_file.py

bench-fleet: $(STAMP)
	$(VENV)/bin/python bench/fleet.py

bench-rehash: $(STAMP)
	$(VENV)/bin/python bench/rehash.py

bench-datapath: $(STAMP) $(BENCH_STAMP)
	$(VENV)/bin/python bench/datapath.py

bench-restore: $(STAMP) $(BENCH_STAMP)
	$(VENV)/bin/python bench/restore.py

# The lock is for Linux x86-64 and Python 3.11, what the tests run on; hashes make pip refuse
# any file other than the one resolved here.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	    --python-platform x86_64-unknown-linux-gnu --generate-hashes -o requirements.lock
	PYTHON=$(PYTHON) bash .ci/bootstrap
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .bench-venv .bench .demo .pytest_cache
