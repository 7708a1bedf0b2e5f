"""The one place a bot's parts are built and tied together, for every way botkit runs.

``assemble`` builds the rules, sender, engine, dispatcher, sweeper, poller, presence
(heartbeat and take-over) and activity log from the store, provider client and renderer it is given, each part receiving its
collaborators in its constructor. The server (``web.server``), ``run.py start`` and
``run.py notify`` (``cli``) and the testing kit all call it; nothing is filled in afterwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from botkit.config import Settings
from botkit.core.consent import Consent
from botkit.core.flows import FlowSet
from botkit.core.lifecycle import DeliveryRules
from botkit.core.limits import Limits
from botkit.core.locales import Locales
from botkit.core.quiet import QuietHours
from botkit.runtime.activity import Activity
from botkit.runtime.api import ProviderAPI
from botkit.runtime.dispatch import Dispatcher
from botkit.runtime.engine import Engine
from botkit.runtime.metrics import Metrics
from botkit.runtime.poller import StatusPoller
from botkit.runtime.presence import Presence
from botkit.runtime.sender import Sender
from botkit.runtime.sweeper import Sweeper
from botkit.runtime.templates import Renderer
from botkit.storage.base import Store

__all__ = ["Bot", "assemble"]


@dataclass(frozen=True, kw_only=True)
class Bot:
    """A bot's parts, built together by ``assemble``; none is optional.

    Example: ``bot = assemble(settings=..., flows=..., store=store, client=client, ...)``
    """

    settings: Settings
    flows: FlowSet
    store: Store
    client: ProviderAPI
    renderer: Renderer
    clock: Callable[[], float]
    secret: str
    callback_url: str
    rules: DeliveryRules
    sender: Sender
    engine: Engine
    dispatcher: Dispatcher
    sweeper: Sweeper
    poller: StatusPoller
    presence: Presence
    activity: Activity
    metrics: Metrics


def assemble(
    *,
    settings: Settings,
    flows: FlowSet,
    store: Store,
    client: ProviderAPI,
    renderer: Renderer,
    clock: Callable[[], float],
    secret: str,
    callback_url: str,
    raise_errors: bool = False,
    send: bool = True,
    concurrency: int | None = None,
    rate: float | None = None,
    hold_abandoned: bool = False,
) -> Bot:
    """Build every part of a bot on an opened ``store``.

    ``send=False`` leaves the turns' messages queued for whichever sender polls the store
    (``run.py start`` when the provider cannot be reached). ``concurrency`` and ``rate``
    override the settings' (command-line flags); ``hold_abandoned`` makes the sender a
    campaign's, whose messages in flight at a kill are marked uncertain, not sent again,
    and whose presence only beats (it takes over no other process's work).
    """
    rules = DeliveryRules(flows, clock)
    metrics = Metrics()
    sender = Sender(
        store, client, rules=rules, clock=clock,
        rate=settings.send_rate if rate is None else rate,
        concurrency=settings.send_concurrency if concurrency is None else concurrency,
        hold_abandoned=hold_abandoned, lease=settings.lease, metrics=metrics,
    )
    consent = Consent(settings.opt_out_keywords, settings.opt_in_keywords,
                      settings.opt_in_by_flow_keyword)
    consent.check(flows)
    engine = Engine(
        store, flows, renderer, sender=settings.sender, callback_url=callback_url,
        clock=clock, outlet=sender if send else None, raise_errors=raise_errors, rules=rules,
        metrics=metrics, consent=consent,
        quiet=QuietHours(*settings.quiet_hours, zones=settings.phone_zones)
        if settings.quiet_hours else None,
        limits=Limits(settings.max_unanswered, settings.max_proactive_per_day),
        locales=Locales(settings.default_locale, settings.locales),
    )
    dispatcher = Dispatcher(engine.handle)
    activity = Activity(lambda: engine.counts + Counter(sent=sender.sent,
                                                        failed_sends=sender.failed))
    return Bot(
        settings=settings, flows=flows, store=store, client=client, renderer=renderer,
        clock=clock, secret=secret, callback_url=callback_url, rules=rules, sender=sender,
        engine=engine, dispatcher=dispatcher,
        sweeper=Sweeper(store, dispatcher, clock=clock, metrics=metrics),
        poller=StatusPoller(store, client, engine, clock=clock,
                            after=settings.status_poll_after),
        presence=Presence(store, dispatcher, sender, clock=clock, lease=settings.lease,
                          take_over=not hold_abandoned),
        activity=activity, metrics=metrics,
    )
