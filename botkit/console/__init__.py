"""The operator console: an agent inbox for conversations handed to a human, in the browser.

``create_console`` builds it (``console.app``); who may see what is ``console.access``;
the pages are ``console.pages``; passwords are ``console.passwords`` (argon2id).
"""

from botkit.console.app import PREFIX, create_console, standalone

__all__ = ["PREFIX", "create_console", "standalone"]
