"""The conversation core: flows and their steps, the Turn and its verbs, routing, the life-cycle
rules and the records the layers above exchange. Pure: no I/O, and it imports no aiohttp,
SQLite or Jinja (tests/test_layering.py keeps it so)."""
