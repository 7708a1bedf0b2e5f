"""A customer satisfaction survey: name, a 1-5 rating, an optional comment, a thank-you.

An invalid rating is asked again; after three invalid tries the survey ends politely.

Started proactively (``python run.py start survey 380501112233``) or by the keyword
``survey``. ``python run.py export survey --csv answers.csv`` gives the answers.
"""

from __future__ import annotations

from datetime import timedelta

from botkit import Flow, Turn

survey = Flow(
    "survey",
    start="name",
    keywords=["survey"],
    sender="Acme Survey",
    timeout=timedelta(hours=24),
    validity=timedelta(hours=6),
)

RATINGS = {"1", "2", "3", "4", "5"}


@survey.step("name", prompt="survey/ask_name.txt")
async def name(turn: Turn) -> None:
    answer = " ".join(turn.text.split())
    if not answer or len(answer) > 60:
        return turn.retry("survey/name_invalid.txt")
    turn.state["name"] = answer
    turn.ask("rating")


@survey.step(
    "rating", prompt="survey/ask_rating.txt", retries=2, give_up="survey/rating_give_up.txt"
)
async def rating(turn: Turn) -> None:
    answer = turn.text.strip()
    if answer not in RATINGS:
        return turn.retry("survey/rating_invalid.txt", answer=answer)
    turn.state["rating"] = int(answer)
    turn.ask("comment")


@survey.step("comment", prompt="survey/ask_comment.txt")
async def comment(turn: Turn) -> None:
    text = turn.text.strip()
    turn.state["comment"] = None if text.casefold() in {"skip", "-", ""} else text
    turn.finish("survey/thanks.txt")
