"""botkit's command line: `python run.py --help`."""

import os
import sys
from pathlib import Path

try:
    from botkit.cli import main
except ImportError as missing:  # this Python lacks botkit's dependencies
    venv = Path(__file__).resolve().parent / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(python), [str(python), *sys.argv])  # the project's own environment
    sys.exit(
        f"error: {missing}. Install botkit first: python3 -m venv .venv &&"
        " .venv/bin/pip install -e . (then use .venv/bin/python run.py)"
    )

sys.exit(main())
