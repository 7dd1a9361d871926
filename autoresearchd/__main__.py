"""Allow ``python -m autoresearchd`` as an alias for the console script."""

from autoresearchd.cli import main

raise SystemExit(main())
