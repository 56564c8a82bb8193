# The two commands of the README. Each creates .venv and installs what it needs when missing.
.PHONY: demo test setup lint

MODEL ?= vgg

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/factorch profile $(MODEL) --pretrained
	.venv/bin/factorch evaluate $(MODEL) --pretrained

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check factorch tests benchmarks
