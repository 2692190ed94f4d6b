"""`python -m digitpi`: the `digitpi` command where its console script is not at hand."""

import sys

from digitpi.cli import main

sys.exit(main())
