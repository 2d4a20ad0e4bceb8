"""`python -m etl_platform.cli`: the same as the `etl-platform` command."""

import sys

from etl_platform.cli.main import main

sys.exit(main())
