"""botkit: two-way Viber bots as decorated functions and Jinja templates.

>>> from botkit import Flow, Turn
>>> survey = Flow("survey", keywords=["survey"], sender="Acme")
>>> @survey.step("name", prompt="survey/ask_name.txt")
... async def name(turn: Turn) -> None:
...     turn.finish("survey/thanks.txt", name=turn.text.strip())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Delivery, Flow, normalize
from botkit.core.turn import Message, Turn
from botkit.errors import (
    BalanceError,
    BotkitError,
    ConcurrentUpdateError,
    ConfigError,
    DefinitionError,
    FlowError,
    InvalidParameterError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    ReplyLimitError,
    SchemaTooNewError,
    StoreUnavailableError,
    TimerTakenError,
    UnauthorizedError,
    UnknownStepError,
)

if TYPE_CHECKING:
    from botkit.config import Settings
    from botkit.web.client import ProviderClient, RetryPolicy
    from botkit.web.server import create_app

# Names whose modules load the server's libraries (aiohttp, sqlite-utils, Jinja): imported on
# first use, so that a bot module's ``from botkit import Flow, Turn`` stays light.
_LAZY = {
    "Settings": "botkit.config",
    "ProviderClient": "botkit.web.client",
    "RetryPolicy": "botkit.web.client",
    "create_app": "botkit.web.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'botkit' has no attribute {name!r}")


__all__ = [
    "BalanceError",
    "BotkitError",
    "ConcurrentUpdateError",
    "ConfigError",
    "Conversation",
    "DefinitionError",
    "Delivery",
    "Flow",
    "FlowError",
    "InvalidParameterError",
    "Message",
    "ProviderClient",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "ReplyLimitError",
    "RetryPolicy",
    "SchemaTooNewError",
    "Settings",
    "Status",
    "StoreUnavailableError",
    "TimerTakenError",
    "Turn",
    "UnauthorizedError",
    "UnknownStepError",
    "create_app",
    "normalize",
]
