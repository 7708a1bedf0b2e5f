"""What the bot measures, as Prometheus metrics (prometheus-client): one registry per bot,
served at ``/metrics`` by ``web.metrics``.

Counters and histograms are fed where things happen (a turn, a commit, a send, a fired
timer, a callback); the gauges of what is waiting (the outbox, pending messages) are read
from the store when ``/metrics`` is asked (``web.metrics``). Each process has its own
registry: Prometheus scrapes every instance, and sums.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from botkit.core.routing import RouteKind

__all__ = ["CALLBACK_KINDS", "SEND_OUTCOMES", "Metrics"]

CALLBACK_KINDS = ("reply", "duplicate", "status", "invalid", "unavailable")
SEND_OUTCOMES = ("sent", "retried", "failed", "paused")

# A turn takes milliseconds; a handler that awaits a slow service, seconds.
_TURN_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_LATE_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 3600.0)


class Metrics:
    """The bot's metrics. ``registry`` is what ``/metrics`` serves."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.callbacks = Counter(
            "botkit_callbacks", "Provider callbacks by what they were: reply, duplicate,"
            " status, invalid (answered 4xx), unavailable (answered 503)", ["kind"], registry=r)
        self.messages = Counter(
            "botkit_messages", "User messages handled, by route (step, start, entry, stale,"
            " restart, human, fallback, opt_out, opt_in, suppressed)", ["route"], registry=r)
        self.handler_errors = Counter(
            "botkit_handler_errors", "Handler exceptions (the user got the error reply)",
            registry=r)
        self.turn_seconds = Histogram(
            "botkit_turn_seconds", "A user message's turn: routing, the handler and the commit",
            buckets=_TURN_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "botkit_db_commit_seconds", "A turn's commit in the database",
            buckets=_COMMIT_BUCKETS, registry=r)
        self.sends = Counter(
            "botkit_sends", "Messages sent to the provider by outcome: sent, retried (a"
            " retryable error, tried again later), failed (given up), paused (401/402)",
            ["outcome"], registry=r)
        self.provider_errors = Counter(
            "botkit_provider_errors", "Provider errors by class (botkit.errors)", ["error"],
            registry=r)
        self.timers_fired = Counter(
            "botkit_timers_fired", "Timers fired, by kind (remind, timeout, expire, ...)",
            ["kind"], registry=r)
        self.timer_lateness = Histogram(
            "botkit_timer_lateness_seconds", "How long after its due time a timer fired",
            buckets=_LATE_BUCKETS, registry=r)
        self.outbox = Gauge(
            "botkit_outbox_messages", "Outbox messages by status: due (queued, may go now),"
            " later (queued for a later try), held (waiting for the phone's quiet hours to"
            " end), sending, failed, uncertain", ["status"],
            registry=r)
        self.outbox_oldest_age = Gauge(
            "botkit_outbox_oldest_age_seconds", "How long the oldest message still queued or"
            " being sent has waited (0 when none waits)", registry=r)
        self.timers_due = Gauge(
            "botkit_timers_due", "Timers due and not fired yet (a sweeper behind, or stopped)",
            registry=r)
        self.inbound_pending = Gauge(
            "botkit_inbound_pending", "User messages stored and not handled yet", registry=r)
        # Each series of a fixed label bound once: the hot path does no label lookup, and
        # every series is exported from the start (at 0), so rate() has a first sample.
        self.callback = {k: self.callbacks.labels(k) for k in CALLBACK_KINDS}
        self.route = {k.value: self.messages.labels(k.value) for k in RouteKind}
        self.send = {k: self.sends.labels(k) for k in SEND_OUTCOMES}
