"""botkit's command line: `python run.py --help`."""

import sys

from botkit.cli import main

sys.exit(main())
