"""Composer: turns a turn's replies into rendered, validated outbox rows.

Each reply's template is rendered with the conversation's ``state`` and ``phone``, checked
against every provider limit (``SendRequest.checked``: a broken limit fails the turn, not the
send), and given the sending defaults of its flow, the reply's overrides, and the callback
URL. Each row records the (flow, step) its answer goes to, and the flow's version. A notice
(``Reply.one_way``) goes as type 106/108 and asks no step; its SMS fallback text is rendered
from its own template, with the same variables.
"""

from __future__ import annotations

from typing import Any

from botkit.core.flows import Delivery, Flow, FlowSet
from botkit.core.records import OutboxItem
from botkit.core.turn import Reply
from botkit.models import MessageType, SendRequest
from botkit.runtime.templates import Renderer

__all__ = ["Composer"]

_DEFAULTS = Delivery()  # for replies of no flow (fallback, errors)


class Composer:
    """Renders replies into outbox rows for one bot.

    >>> Composer(renderer, flows, sender="Acme", callback_url=url).compose(
    ...     [(Reply("survey/ask_name.txt"), survey)], "380501112233", ("survey", "name"), {})
    """

    def __init__(
        self, renderer: Renderer, flows: FlowSet, *, sender: str, callback_url: str
    ) -> None:
        self.renderer = renderer
        self.flows = flows
        self.sender = sender
        self.callback_url = callback_url

    def compose(
        self,
        replies: list[tuple[Reply, Flow | None]],
        phone: str,
        asked: tuple[str, str] | None,
        state: dict[str, Any] | None = None,
        *,
        question: bool = False,
        locale: str | None = None,
    ) -> tuple[OutboxItem, ...]:
        """Render and validate ``replies``; each records the (flow, step) it asks.

        ``question`` marks the last reply as the one that asks the step; ``locale`` is the
        language the templates speak (``Renderer.localized``).
        """
        asked_flow = self.flows.get(asked[0]) if asked else None
        version = asked_flow.version_id if asked_flow else None
        flow_name, step_name = asked if asked else (None, None)
        # The question is the last 2Way reply (a notice after it asks nothing).
        last = max((n for n, (reply, _) in enumerate(replies) if not reply.one_way),
                   default=-1) if question else -1
        items = []
        for n, (reply, flow) in enumerate(replies):
            # Every template sees the conversation's state and the phone; reply variables win.
            context = {"state": state or {}, "phone": phone, **reply.variables}
            rendered = self.renderer.render(reply.template, context, locale)
            base = flow.delivery if flow else _DEFAULTS
            delivery = reply.delivery.over(base) if reply.delivery else base
            validity = delivery.validity.total_seconds() if delivery.validity else None
            if reply.one_way:
                kind = MessageType.RICH if rendered.rich else MessageType.TEXT
                # Transactional by default: the type that may carry an SMS fallback.
                source_type = delivery.source_type or (1 if rendered.rich else 2)
            else:
                kind = MessageType.TWO_WAY_RICH if rendered.rich else MessageType.TWO_WAY_TEXT
                source_type = delivery.source_type or 1
            text_sms = (self.renderer.render(reply.sms, context, locale).text if reply.sms
                        else None)
            request = SendRequest.checked(
                source_addr=delivery.sender or self.sender,
                destination_addr=phone,
                message_type=kind,
                text=rendered.text,
                image=rendered.image,
                button_caption=rendered.button_caption,
                button_action=rendered.button_action,
                source_type=source_type,
                callback_url=self.callback_url,
                validity_period=int(validity) if validity is not None else None,
                text_sms=text_sms,
            )
            items.append(OutboxItem(
                phone=phone, flow=flow_name, step=None if reply.one_way else step_name,
                template=reply.template, text=rendered.text, message_type=int(kind),
                payload=request.model_dump(mode="json", exclude_none=True),
                flow_version=version, question=n == last,
            ))
        return tuple(items)
