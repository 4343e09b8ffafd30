"""`python -m recpipe.cli`: the same as the `recpipe` command."""

import sys

from recpipe.cli import main

sys.exit(main())
