# The two commands: `make demo` and `make test`. Both create .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: where no CUDA is present this takes the local CPU wheel, so
# that the package's torch range is already satisfied and nothing pulls a CUDA build.
# Then the toxicity judge's weights with --no-deps: the package declares TensorFlow, which is not
# needed (h5py, in the dev extra, reads the weights).
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,bench]"
	$(PIP) install -q --no-deps "toxic-comment-classifier==0.3.0"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/sgm demo --out runs/sgm-demo
	$(VENV)/bin/fggm demo --out runs/fggm-demo

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
