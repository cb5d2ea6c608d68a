# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Both create .venv and install the package (with the pins in $(CONSTRAINTS)) first.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install demo test test-slow bench-cpu clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_C) -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlm-teacher demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench-cpu: $(STAMP)
	$(PY) benchmarks/cpu_step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
