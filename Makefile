# Quickstart: `make demo` and `make test`. Each creates .venv on first use.
# torch==2.13.0: the CPU build lies on this project's machines; on a GPU machine pip takes the CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: install demo test bench lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# open_clip's model code for the converter tests, without its torchvision requirement (see tests/open_clip_code.py)
	$(PY) -m pip install -q --no-deps "open_clip_torch>=3.3"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m hnc_clip.demo --output_dir $(DEMO_DIR)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/train_throughput.py
	HF_HUB_OFFLINE=1 $(PY) bench/convert_hnc.py

lint:
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR)
