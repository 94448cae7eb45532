"""``python -m driftd`` is the ``driftd`` command."""

from __future__ import annotations

from driftd.cli import main

raise SystemExit(main())
