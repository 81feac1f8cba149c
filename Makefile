# The two entry points: `make demo` (the embedded demo) and `make test` (ruff, mypy, pytest).
# Both set everything up on a fresh Debian machine (root: apt-get, network namespaces).
.PHONY: demo test lint bench setup

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/nicreconciled demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: setup
	.venv/bin/python -m bench
