# Two commands do all set-up on a fresh machine:
#   make demo   installs the CPU environment into .venv and runs `snakemake --cores all`
#   make test   installs the same environment and runs the test suite
# On a GPU machine: make demo ENV=envs/cuda.txt PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cu130"
PYTHON ?= python3
VENV ?= .venv
ENV ?= envs/cpu.txt
PIP_EXTRA ?=
CORES ?= all
SNAKEMAKE_ARGS ?=
# test files run on two processes (pytest-xdist): much of the suite waits on subprocesses and servers
TEST_WORKERS ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test lint report clean
install: $(VENV)/.installed

$(VENV)/.installed: $(ENV) envs/common.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r $(ENV) $(PIP_EXTRA)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

demo: install
	snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: install
	pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: install
	snakemake --lint

report: install
	snakemake --report report.html

clean:
	rm -rf results data/demo .snakemake mlflow.db mlartifacts report.html
