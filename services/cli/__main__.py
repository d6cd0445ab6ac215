"""`python -m services.cli`: how `abonent up` and the tests start the command without the console script."""

import sys

from services.cli import main

sys.exit(main())
