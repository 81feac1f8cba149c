from __future__ import annotations

from nicreconciled.cli import main

raise SystemExit(main())
