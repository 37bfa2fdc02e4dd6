# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job, quick: stock vs PLADIS alignment on the bundled model, attention probes, then its figures.
DEMO_OUT ?= demo_output
demo: $(STAMP)
	$(PY) experiments/pladis_shapes_study.py --quick --out $(DEMO_OUT)
	$(PY) -m pladis_analysis.cli figures --results $(DEMO_OUT) --out $(DEMO_OUT)
	@echo "demo results and figures are in $(DEMO_OUT)/"

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q

# The property tests with 1000 fresh examples each (the suite's default is a fixed 60); SEED=N repeats a run.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=thorough TRITON_INTERPRET=1 $(PY) -m pytest -q -m property $(if $(SEED),--hypothesis-seed=$(SEED))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
