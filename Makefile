# The two commands of the README. Each creates .venv and installs what it needs when missing.
.PHONY: demo test setup lint

MODEL ?= vgg

setup:
	@bash scripts/setup.sh

# the main job on the built-in default: Tucker-2 at half rank on the pretrained vgg, with the before/after table
demo: setup
	.venv/bin/factorch compress $(MODEL) --pretrained --method tucker2 --rank 0.5 --fold-bn --out runs/demo-$(MODEL)

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check factorch tests benchmarks
