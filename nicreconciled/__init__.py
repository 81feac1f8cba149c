"""nicreconciled: hot-plugged cloud NICs, configured from settled metadata and kept true."""

from __future__ import annotations

__version__ = "0.3.0"
