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

# scratch output: the committed benchmarks/results/cpu_step.* change only when asked for
# (`$(PY) benchmarks/cpu_step.py` without --out, or BENCH_CPU_OUT=benchmarks/results/cpu_step)
BENCH_CPU_OUT ?= bench_out/cpu_step

bench-cpu: $(STAMP)
	$(PY) benchmarks/cpu_step.py --out $(BENCH_CPU_OUT)

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
