"""Flow and Turn definitions: mistakes fail loudly, at import or at the call."""

from __future__ import annotations

import pytest

from botkit import DefinitionError, Flow, FlowError, UnknownStepError
from botkit.core.flows import FlowSet, normalize
from botkit.core.turn import Message, Turn


def make_flow(name: str = "f") -> Flow:
    flow = Flow(name)

    @flow.step("rating", prompt="p.txt")
    async def rating(turn: Turn) -> None: ...

    @flow.step("comment", prompt="c.txt")
    async def comment(turn: Turn) -> None: ...

    return flow


def turn_for(flow: Flow, step: str = "rating") -> Turn:
    flows = FlowSet([flow])
    return Turn(flows=flows, step=flow.get(step), message=Message(text="hi", phone="1", time=0, token="t"),
                state={}, conversation_id=1)


def test_sync_handler_fails_at_import():
    flow = Flow("f")
    with pytest.raises(DefinitionError, match="must be 'async def'"):
        @flow.step("a")
        def a(turn): ...


def test_duplicate_step_names_both_places():
    flow = make_flow()
    with pytest.raises(DefinitionError, match=r"declares step 'rating' twice \(.*test_flows.py:\d+ and .*test_flows.py:\d+\)"):
        @flow.step("rating")
        async def again(turn): ...


def test_bad_names_are_refused():
    with pytest.raises(DefinitionError, match="flow name"):
        Flow("Bad Name")
    with pytest.raises(DefinitionError, match="step name"):
        Flow("ok").step("Not OK")


def test_step_after_start_is_refused():
    flow = make_flow()
    FlowSet([flow])
    with pytest.raises(DefinitionError, match="already running"):
        flow.step("late")


def test_duplicate_flow_and_keyword():
    with pytest.raises(DefinitionError, match="two flows are named 'f'"):
        FlowSet([make_flow(), make_flow()])
    a, b = Flow("a", keywords=["Go"]), Flow("b", keywords=[" go "])
    for flow in (a, b):
        flow.step("s", prompt="p.txt")(_noop)
    with pytest.raises(DefinitionError, match="keyword 'go' starts both a.s and b.s"):
        FlowSet([a, b])


async def _noop(turn: Turn) -> None: ...


def test_unknown_step_suggests_the_closest():
    turn = turn_for(make_flow())
    with pytest.raises(UnknownStepError, match=r"flow 'f' has no step 'ratng' \(did you mean 'rating'\?\)"):
        turn.ask("ratng")
    with pytest.raises(UnknownStepError, match="no flow is named 'suport'"):
        turn.switch("suport")


def test_ending_a_turn_twice_names_both_calls():
    turn = turn_for(make_flow())
    turn.ask("comment")
    with pytest.raises(FlowError, match=r"already ended with ask\(\) at test_flows.py:\d+; cannot also finish\(\) at test_flows.py:\d+"):
        turn.finish()


def test_say_does_not_end_the_turn():
    turn = turn_for(make_flow())
    turn.say("a.txt", x=1)
    turn.say("b.txt")
    turn.ask("comment", name="Ana")
    assert [r.template for r in turn.replies] == ["a.txt", "b.txt", "c.txt"]
    assert turn.replies[2].variables == {"name": "Ana"}
    assert turn.transition.kind == "ask" and turn.transition.step == "comment"


def test_ask_a_step_without_prompt_needs_a_template():
    flow = Flow("g")
    flow.step("a", prompt="a.txt")(_noop)
    flow.step("b")(_noop)
    turn = turn_for(flow, "a")
    with pytest.raises(FlowError, match=r"step 'b' has no prompt"):
        turn.ask("b")


def test_retry_gives_up_after_the_limit():
    flow = Flow("h", give_up="flow_bye.txt")
    flow.step("a", prompt="a.txt", retries=1)(_noop)
    flows = FlowSet([flow])
    first = Turn(flows=flows, step=flow.get("a"), message=Message(text="x", phone="1", time=0, token="t"),
                 state={}, conversation_id=1, retries=0)
    first.retry("invalid.txt")
    assert not first.gave_up and first.replies[0].template == "invalid.txt"
    second = Turn(flows=flows, step=flow.get("a"), message=Message(text="x", phone="1", time=0, token="t"),
                  state={}, conversation_id=1, retries=1)
    second.retry("invalid.txt")
    assert second.gave_up and second.replies[0].template == "flow_bye.txt"


def test_keywords_are_normalised():
    assert normalize("  Opening\tHOURS ") == "opening hours"
    flow = Flow("k", keywords=["Opening Hours"])
    flow.step("s", prompt="p.txt", keywords=["PRICES"])(_noop)
    flows = FlowSet([flow])
    assert flows.entry("opening   hours") == (flow.get("s"), False)
    assert flows.entry(" prices") == (flow.get("s"), True)
    assert flows.entry("nothing") is None
