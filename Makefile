# The two commands of the README. Each creates (or reuses) the virtual environment in $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Where torch and torchvision come from: empty = PyPI (on Linux x86-64 the CUDA build). For a CPU-only machine:
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup demo demo-seg test bench-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX_URL) torch torchvision)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# Pretrain a small MAE on scikit-learn's handwritten digits (nothing downloaded), then draw its reconstructions.
demo: setup
	$(PY) run_pretraining.py configs/pretrain_digits_demo.yaml --overwrite_output_dir
	@echo "reconstructions: outputs/pretrain_digits/reconstruction.png"
	@echo "training curves (loss, learning rate, k-NN / linear-probe top-1): outputs/pretrain_digits/training_curves.png"

# Segmentation on digits_seg (CPU, 2 processes of one thread): MAE pretraining, then UperNet fine-tunes on all 800
# labelled canvases from the MAE encoder and from random init; a table, overlay figures and learning curves.
demo-seg: setup
	OMP_NUM_THREADS=1 $(PY) experiments/digits_seg_label_efficiency.py
	@echo "overlays: docs/digits_seg_mae_overlay.png, docs/digits_seg_scratch_overlay.png; learning curves: docs/digits_seg_learning_curves.png"

# Lint (rules in pyproject.toml), then the tests.
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# Formatting check, not yet part of `make test` (the tree is formatted once, when the parallel work has landed).
bench-smoke: setup
	$(PY) benchmarks/bench_pretrain_step.py --smoke

clean:
	rm -rf $(VENV) outputs
