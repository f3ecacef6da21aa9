# Two commands do all set-up on a fresh machine:
#   make demo   installs the CPU environment into .venv and runs `snakemake --cores all`
#   make test   installs the same environment and runs the test suite
#   make test-fast   the unit tier only (pytest -m unit; tiers: pyproject.toml's markers)
#   make lint   ruff (lint and format check), snakefmt --check, snakemake --lint, mypy (model/)
# On a GPU machine: make demo ENV=envs/cuda.txt
PYTHON ?= python3
VENV ?= .venv
ENV ?= envs/cpu.txt
# torch is installed alone, from the index its env file names on a `# torch index:` line
# (PyPI's torch is the CUDA build: about 2.7 GB of wheels). Override for a mirror, or
# TORCH_INDEX= (empty) to take it from pip's own configuration (a local wheel or index).
TORCH_INDEX ?= $(shell sed -n 's/^\# torch index: *//p' $(ENV))
TORCH_PIN = $(shell sed -n 's/^\(torch==[^ \#]*\).*/\1/p' $(ENV))
PIP_EXTRA ?=
LINT_ENV ?= envs/lint.txt
CORES ?= all
SNAKEMAKE_ARGS ?=
# test files run on two processes (pytest-xdist): much of the suite waits on subprocesses and servers
TEST_WORKERS ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)

# snakemake 9 needs Python 3.11; tarfile.data_filter (pipeline/archive.py) came in 3.11.4.
CHECK_PYTHON = $(PYTHON) -c 'import sys; found = ".".join(map(str, sys.version_info[:3])); \
	sys.exit(0 if sys.version_info >= (3, 11, 4) else "error: Python 3.11.4 or newer is needed \
	(snakemake 9 needs 3.11, tarfile.data_filter 3.11.4); $(PYTHON) is Python %s: \
	rerun with PYTHON=python3.12 or another newer one" % found)'

.PHONY: install demo test test-fast lint check-python report clean
install: $(VENV)/.installed

check-python:
	@$(CHECK_PYTHON)

$(VENV)/.installed: $(ENV) envs/common.txt pyproject.toml
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH_PIN) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install -q -r $(ENV) $(PIP_EXTRA)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV)/.lint-installed: $(VENV)/.installed $(LINT_ENV)
	$(VENV)/bin/pip install -q -r $(LINT_ENV)
	touch $@

demo: install
	snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: install
	pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast: install
	pytest -q -n $(TEST_WORKERS) --dist loadfile -m unit tests

lint: $(VENV)/.lint-installed
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow/rules
	snakemake --lint
	mypy

report: install
	snakemake --report report.html

clean:
	rm -rf results data/demo .snakemake mlflow.db mlartifacts report.html
