# cnnlab: `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pip options, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU-only wheels.
TORCH_INDEX ?=
PIP_ARGS ?= $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
ARGS ?=
# where runs go: paths.log_dir's default, $CNNLAB_OUTPUTS or outputs
DIR ?= $(or $(CNNLAB_OUTPUTS),outputs)

.PHONY: install train test lint format tensorboard sweep report reproduce bench bench-startup clean help browser slurm

install: $(STAMP)  ## create .venv and install cnnlab with its dev tools

# editable_mode=compat puts src/ on sys.path, so Hydra finds the hydra_plugins/cnnlab_plugins
# namespace package (the default editable finder hides namespace packages from Hydra's scan).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

train: install  ## train the default experiment (ARGS="experiment=... key=value" to change it)
	$(BIN)/python -m cnnlab.train $(ARGS)

test: install browser slurm  ## run the test suite
	$(BIN)/python -m pytest -q -n auto --dist loadgroup $(ARGS)

# The TensorBoard browser test drives Debian's chromium; without it that test is skipped.
browser:  ## install chromium with apt-get when missing (root only; never fails)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      >/dev/null 2>&1 \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium is not installed: the browser test will be skipped"; fi; }

# The Slurm tests start a one-node cluster from Debian's packages; without them they are skipped.
slurm:  ## install Slurm's Debian packages for its tests (root only; never fails)
	@if [ "$$(id -u)" = 0 ]; then scripts/slurm_cluster.sh install >/dev/null \
	  || echo "Slurm could not be installed: the Slurm cluster tests will be skipped"; \
	else command -v sbatch >/dev/null 2>&1 || echo "not root: the Slurm cluster tests are skipped"; fi

lint: install  ## ruff check and format check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install  ## ruff fix and format
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

tensorboard: install  ## browse every run under outputs/
	$(BIN)/tensorboard --logdir $(DIR)

sweep: install  ## a multirun, e.g. make sweep ARGS="sweep=cifar2_study"
	$(BIN)/python -m cnnlab.train -m $(ARGS)

report: install  ## results table of a sweep: make report DIR=outputs/multiruns/<date>/<time>
	$(BIN)/python -m cnnlab.report $(DIR)

reproduce: install  ## the sources' experiments whose data is present, then docs/RESULTS.md (DATA=dir SEEDS=n)
	$(BIN)/python -m cnnlab.reproduce $(if $(DATA),--data $(DATA)) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

bench: install  ## framework vs raw PyTorch loop throughput
	$(BIN)/python scripts/bench_throughput.py $(ARGS)

bench-startup: install  ## start-up time of a run and the cost of a sweep
	$(BIN)/python scripts/bench_startup.py $(ARGS)

clean:  ## caches only: run output under outputs/ is never deleted by make
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

help:  ## list the make targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
