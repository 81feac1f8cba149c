# The two entry points: `make demo` (the embedded demos, EC2 then CloudStack) and `make test`
# (ruff, mypy, pytest).
# Both set everything up on a fresh Debian machine (root: apt-get, network namespaces).
.PHONY: demo test lint bench setup

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/nicreconciled demo --cloud ec2
	.venv/bin/nicreconciled demo --cloud cloudstack

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: setup
	.venv/bin/python -m bench
