# The two entry points: `make demo` (the embedded demos: EC2, OCI, OpenStack, CloudStack, GCE)
# and `make test` (ruff, mypy, pytest).
# Both set everything up on a fresh Debian machine (root: apt-get, network namespaces).
.PHONY: demo test lint bench setup soak-check

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/nicreconciled demo --cloud ec2
	.venv/bin/nicreconciled demo --cloud oci
	.venv/bin/nicreconciled demo --cloud openstack
	.venv/bin/nicreconciled demo --cloud cloudstack
	.venv/bin/nicreconciled demo --cloud gce

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: setup
	.venv/bin/pip install -q -e '.[bench]'
	.venv/bin/python -m bench

# CI's short soak (bench/README.md, "soak"): five minutes of churn on the real networkd;
# fails on a leak (memory or descriptors), a traceback or a NIC left incomplete.
soak-check: setup
	.venv/bin/python -m bench soak --soak-minutes 5 --soak-strict

# The Debian package (packaging/README.md), for the release this machine runs or for
# SUITE=bookworm|trixie. `make deb` builds dist/nicreconciled_<version>~deb<N>_<arch>.deb with
# dpkg-buildpackage (for another release in a cached build root); `make deb-check` builds it if
# needed and runs lintian, and for this machine's release installs it, runs it in a scratch
# network namespace and purges it (root).
.PHONY: deb deb-check

deb:
	SUITE='$(SUITE)' ./packaging/build-deb

deb-check:
	SUITE='$(SUITE)' ./packaging/check-deb

# The network lab on Debian 13's stack (networkd 257, NetworkManager 1.52, netplan 1.1,
# Python 3.13) from a cached trixie root, chrooted in private mount and PID namespaces
# (tests/suitelab.py; root). Every lab module but the metrics scrape, whose subject
# (node_exporter reading our file) does not depend on the network stack.
.PHONY: lab-trixie matrix

lab-trixie: setup
	./scripts/suite-lab trixie -q tests/integration/lab \
		--ignore=tests/integration/lab/test_metrics_scrape.py

# Debian 13 next to Debian 12 (CI runs on Debian 12; `make test` covers the host's release):
# the trixie package in a booted trixie container (tests/integration/systemd), then the lab on
# trixie's network stack.
matrix: setup
	NICR_SUITES=trixie .venv/bin/pytest -q tests/integration/systemd
	$(MAKE) lab-trixie
