# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs. torch is pinned here
# (a CPU build on the CI machine); the package itself only asks for a range.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prefkit-installed
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -c requirements-ci.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prefkit demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/relabel.py
	$(PY) benchmarks/train_vs_trl.py
	$(PY) benchmarks/synth_throughput.py
	$(PY) benchmarks/http_client_cpu.py
	$(PY) benchmarks/select_streaming.py
	$(PY) benchmarks/data_binarize.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
