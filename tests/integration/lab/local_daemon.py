"""``nicreconciled`` with the lab-only ``lrlab`` cloud (local_source.py) registered.

Run as the daemon is (``python local_daemon.py --config FILE run``) inside a lab's instance;
the rest is the product's own command line, untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from nicreconciled import sources
from nicreconciled.cli import main
from tests.integration.lab.local_source import NAME

sources.SOURCES[NAME] = "tests.integration.lab.local_source:LocalSource"

if __name__ == "__main__":
    raise SystemExit(main())
