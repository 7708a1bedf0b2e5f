"""A customer satisfaction survey: name, a 1-5 rating, an optional comment, a thank-you.

The rating question is an A/B test of two wordings. An invalid rating is asked again; after
three invalid tries the survey ends politely. A question left unanswered gets one "still
there?" after 2 hours and closes the survey politely after 12. A first message that cannot
be delivered is sent once more, then the survey is closed as unreachable.

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

# Every question: one reminder after 2 hours, closed politely after 12.
WAITING = {
    "remind_after": timedelta(hours=2),
    "remind": "survey/still_there.txt",
    "timeout": timedelta(hours=12),
    "on_timeout": "survey/closed.txt",
}


async def first_question_undelivered(turn: Turn) -> None:
    """The first question never reached the phone: send it once more, then give up."""
    if turn.state.get("resent"):
        return turn.finish()  # closed as unreachable
    turn.state["resent"] = True
    turn.ask("name")


@survey.step("name", prompt="survey/ask_name.txt", on_undelivered=first_question_undelivered,
             **WAITING)
async def name(turn: Turn) -> None:
    answer = " ".join(turn.text.split())
    if not answer or len(answer) > 60:
        return turn.retry("survey/name_invalid.txt")
    turn.state["name"] = answer
    turn.ask("rating")


# An A/B test of the rating question: half the phones get each wording
# (``python run.py stats survey`` compares their completion rates).
RATING_PROMPTS = {"survey/ask_rating.txt": 50, "survey/ask_rating_b.txt": 50}


@survey.step("rating", prompt=RATING_PROMPTS, retries=2,
             give_up="survey/rating_give_up.txt", **WAITING)
async def rating(turn: Turn) -> None:
    answer = turn.text.strip()
    if answer not in RATINGS:
        return turn.retry("survey/rating_invalid.txt", answer=answer)
    turn.state["rating"] = int(answer)
    turn.ask("comment")


@survey.step("comment", prompt="survey/ask_comment.txt", **WAITING)
async def comment(turn: Turn) -> None:
    text = turn.text.strip()
    turn.state["comment"] = None if text.casefold() in {"skip", "-", ""} else text
    turn.finish("survey/thanks.txt")
