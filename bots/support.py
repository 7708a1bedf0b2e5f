"""Auto-replies for a support line: a menu, answers by keyword, order status, a human agent.

``menu`` (or ``help``) shows the menu, and so does any first message that is no keyword
(``default="ask"``: the support line is the app's default flow). ``hours``, ``prices``,
``order`` and ``agent`` work with or without the menu. It speaks English and Ukrainian
(``templates/uk/support/``): ``5`` in the menu switches (``turn.locale``). ``agent`` hands the conversation to a person: auto-replies stop
until ``python run.py release PHONE``.
"""

from __future__ import annotations

import re
from datetime import timedelta

from botkit import Flow, Turn, normalize

support = Flow(
    "support",
    start="menu",
    keywords=["menu", "help", "support"],
    # Whatever a customer writes first ("hi", "where is my order?") gets the menu.
    default="ask",
    sender="Acme Support",
    timeout=timedelta(hours=2),
    give_up="support/bye.txt",
)

# A stand-in for the shop's order system, in both languages of the bot.
ORDERS = {
    "en": {"100200": "shipped on Monday, arriving Thursday", "100300": "being packed"},
    "uk": {"100200": "відправлено в понеділок, прибуде в четвер", "100300": "збирається"},
}
ORDER_NUMBER = re.compile(r"^#?\s*(\d{6})$")

CHOICES = {
    "1": "hours", "hours": "hours", "opening hours": "hours",
    "2": "prices", "prices": "prices", "price": "prices",
    "3": "order", "order": "order", "order status": "order",
    "4": "agent", "agent": "agent", "human": "agent",
    "5": "language", "українською": "uk", "українська": "uk", "english": "en",
    "0": "bye", "bye": "bye", "done": "bye",
}


@support.step(
    "menu",
    prompt="support/menu.txt",
    keywords=["hours", "opening hours", "prices", "order", "order status", "agent"],
)
async def menu(turn: Turn) -> None:
    choice = CHOICES.get(normalize(turn.text))
    if choice == "hours":
        turn.say("support/hours.txt")
    elif choice == "prices":
        turn.say("support/prices.txt")
    elif choice == "order":
        turn.ask("order_number")
    elif choice == "agent":
        turn.handoff("support/agent.txt")
    elif choice == "bye":
        turn.finish("support/bye.txt")
    elif choice in ("language", "uk", "en"):
        if choice == "language":  # 5: the other of the two
            choice = "en" if turn.locale == "uk" else "uk"
        turn.locale = choice
        turn.ask("menu")  # the menu again, in that language
    else:
        turn.retry("support/menu_invalid.txt", answer=turn.text.strip())


@support.step("order_number", prompt="support/ask_order.txt", retries=2)
async def order_number(turn: Turn) -> None:
    match = ORDER_NUMBER.match(turn.text.strip())
    if match is None:
        return turn.retry("support/order_invalid.txt")
    number = match.group(1)
    turn.state.setdefault("orders_checked", []).append(number)
    statuses = ORDERS.get(turn.locale or "en", ORDERS["en"])
    turn.ask("menu", template="support/order_status.txt", number=number,
             status=statuses.get(number))
