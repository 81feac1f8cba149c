# The two entry points: `make demo` (the embedded demos: EC2, OCI, OpenStack, CloudStack)
# and `make test` (ruff, mypy, pytest).
# Both set everything up on a fresh Debian machine (root: apt-get, network namespaces).
.PHONY: demo test lint bench setup

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/nicreconciled demo --cloud ec2
	.venv/bin/nicreconciled demo --cloud oci
	.venv/bin/nicreconciled demo --cloud openstack
	.venv/bin/nicreconciled demo --cloud cloudstack

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: setup
	.venv/bin/pip install -q -e '.[bench]'
	.venv/bin/python -m bench

# The Debian package (packaging/README.md). `make deb` builds dist/nicreconciled_*.deb with
# dpkg-buildpackage; `make deb-check` builds it if needed, runs lintian, installs it, runs it
# in a scratch network namespace and purges it (root).
.PHONY: deb deb-check

deb:
	./packaging/build-deb

deb-check:
	./packaging/check-deb
