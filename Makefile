# earthembed: `make demo` (install + run the embedded-default pipeline), `make test` (install + tests)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh scripts/torchvision_shim.py
	bash scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/earthembed demo --out demo_out

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_store.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
