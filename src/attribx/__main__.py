"""``python -m attribx``: the command line, for environments whose scripts folder is not on PATH."""
from .cli import main

raise SystemExit(main())
