"""The sandbox: a faithful fake of the DecisionTelecom provider, for tests and local runs.

``FakeProvider`` holds the state (messages, statuses, simulated users, faults) and
``create_provider_app`` serves it over real HTTP, so botkit's client cannot tell it from
the real provider::

    provider = FakeProvider(api_key="secret")
    app = create_provider_app(provider, prefix="/v1/api")
    provider.faults.script(Fault.status(429))     # the next send is rate limited
"""

from __future__ import annotations

from botkit.sandbox.faults import Fault
from botkit.sandbox.provider import FakeProvider
from botkit.sandbox.provider_app import create_provider_app

__all__ = ["FakeProvider", "Fault", "create_provider_app"]
