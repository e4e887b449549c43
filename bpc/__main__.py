"""`python -m bpc ...`: the same as the `bpc` command."""
from .cli import main

raise SystemExit(main())
