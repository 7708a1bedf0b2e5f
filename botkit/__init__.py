"""botkit: two-way Viber bots as decorated functions and Jinja templates.

>>> from botkit import Flow, Turn
>>> survey = Flow("survey", keywords=["survey"], sender="Acme")
>>> @survey.step("name", prompt="survey/ask_name.txt")
... async def name(turn: Turn) -> None:
...     turn.finish("survey/thanks.txt", name=turn.text.strip())
"""

from __future__ import annotations

from .client import ProviderClient, RetryPolicy
from .config import Settings
from .conversation import Conversation, Status
from .errors import (
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
    TimerTakenError,
    UnauthorizedError,
    UnknownStepError,
)
from .flows import Delivery, Flow
from .server import create_app
from .turn import Message, Turn

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
    "TimerTakenError",
    "Turn",
    "UnauthorizedError",
    "UnknownStepError",
    "create_app",
]
