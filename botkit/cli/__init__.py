"""The command line (``python run.py ...``): the commands, the bots loader and ``check``."""

from botkit.cli.main import main

__all__ = ["main"]
