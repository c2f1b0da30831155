"""``python -m flopsbook``: the command line of :mod:`flopsbook.cli`."""

from .cli import main

raise SystemExit(main())
