# Two commands on a fresh machine: `make demo` (set up, simulate the demo phantom, run the app) and
# `make test` (set up, run the test suite). Everything installs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-output
DEMO_DOSE ?= 0.25
DEMO_SEED ?= 1000

.PHONY: setup demo test train-prior benchmarks clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, alone: the CPU wheel on these machines; later ranges keep it.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
	./scripts/install-system-deps.sh

demo: setup
	$(PY) -m demo --out $(DEMO_DIR) --dose $(DEMO_DOSE) --seed $(DEMO_SEED)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

benchmarks: setup  # about an hour on 2 cores; each writes its table to benchmarks/results/
	$(PY) -m benchmarks.patlak_speed
	$(PY) -m benchmarks.sampler_speed  # on a GPU machine: --app-dose 0 --autocast bf16 --out benchmarks/results/sampler_speed_gpu.md
	$(PY) -m benchmarks.memory_scale
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.schedules

train-prior: setup
	$(PY) -m models.train_prior --out models/prior

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
