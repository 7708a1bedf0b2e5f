"""Example bots: every module here that defines ``Flow`` objects is loaded by ``run.py``."""
