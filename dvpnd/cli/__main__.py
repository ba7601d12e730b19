"""`python -m dvpnd.cli`: the same as `dvpnctl`."""

import sys

from dvpnd.cli.main import main

sys.exit(main())
