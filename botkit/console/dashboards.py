"""The console's dashboards (admins): the flows, and per flow its funnel for a date range,
the drop-off and median time to answer of each step, the delivery statuses of its
questions, per A/B-tested step the same figures by variant (with a two-proportion z-test of
completion against the control), and the flow drawn as a graph with the funnel's counts on
it.

The figures are ``Store.funnel``'s, the same as ``run.py stats FLOW``'s. The charts are SVG
drawn on the server (no script, no inline style: the console's CSP allows neither).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from botkit.console.access import ADMIN, Routes, refuse
from botkit.console.fields import FieldError, day_range
from botkit.console.pages import BOT, render
from botkit.core.experiments import ALPHA, MIN_EACH, by_variant
from botkit.core.flows import Flow
from botkit.core.graph import FINISHED, HANDED_OVER, Edge, edges

__all__ = ["add_dashboards", "funnel_of"]

ENDINGS = ("gave_up", "timed_out", "expired", "unreachable", "released", "replaced", "orphaned")
# The graph's geometry, in SVG units.
NODE_W, NODE_H, GAP, LEFT, TOP = 290, 48, 34, 16, 12


def add_dashboards(routes: Routes) -> None:
    """Add the flows' dashboards to ``routes`` (admins only)."""
    routes.add("GET", "/flows", _flows, ADMIN, name="flows")
    routes.add("GET", "/flows/{flow}", _flow, ADMIN, name="flow")
    routes.add("GET", "/api/flows/{flow}", _flow_json, ADMIN, name="flow_feed")


async def _flows(request: web.Request) -> web.Response:
    bot = request.app[BOT]()
    stored: dict[str, dict[str, int]] = {}
    for row in await bot.store.versions():
        counts = stored.setdefault(row["flow"], {"open": 0, "total": 0})
        counts["open"] += row["open"]
        counts["total"] += row["total"]
    names = sorted(set(bot.flows) | set(stored))
    flows = [{"name": n, "loaded": n in bot.flows, **stored.get(n, {"open": 0, "total": 0})}
             for n in names]
    return await render(request, "flows.html", flows=flows)


async def _flow(request: web.Request) -> web.Response:
    try:
        report = await funnel_of(request)
    except FieldError as exc:
        return refuse(request, 400, str(exc))
    return await render(request, "flow.html", report=report, alpha=ALPHA, min_each=MIN_EACH,
                        graph=_graph(request.app[BOT]().flows.get(report["flow"]), report),
                        query={k: request.query.get(k, "") for k in ("from", "to")})


async def _flow_json(request: web.Request) -> web.Response:
    try:
        return web.json_response(await funnel_of(request))
    except FieldError as exc:
        return refuse(request, 400, str(exc))


async def funnel_of(request: web.Request) -> dict[str, Any]:
    """The flow's funnel for the request's ``from`` and ``to`` days: per step in the flow's
    order, how many conversations reached it (were asked its question), answered it (one
    answer or more; ``answers`` counts them all, ``reasked`` the ones asked again), ended
    at it and how, the drop-off (ended at it / reached it), the median time to answer and
    the delivery statuses of its questions; ``ab_tests``: per A/B-tested step, its
    variants' figures (``core.experiments.VariantFigures.as_dict``)."""
    bot = request.app[BOT]()
    name = request.match_info["flow"]
    since, until = day_range(request.query.get("from", "").strip(),
                             request.query.get("to", "").strip())
    flow = bot.flows.get(name)
    raw = await bot.store.funnel(name, since, until, variants=flow.variants if flow else None)
    if flow is None and not raw["started"]:
        raise web.HTTPNotFound(reason=f"no flow is named {name!r}")
    return _report(name, flow, raw, since, until)


def _report(name: str, flow: Flow | None, raw: dict[str, Any],
            since: float | None, until: float | None) -> dict[str, Any]:
    order = list(flow.steps) if flow else []
    names = order + sorted(set(raw["steps"]) - set(order))
    steps = []
    for step in names:
        counts = raw["steps"].get(step, {})
        reached = counts.get("reached", 0)
        ended = dict(sorted(counts.get("ended", {}).items()))
        delays = sorted(counts.get("delays", []))
        steps.append({
            "step": step, "reached": reached, "answered": counts.get("answered_by", 0),
            "answers": counts.get("answered", 0),
            "reasked": counts.get("reasked", 0), "timed_out": counts.get("timed_out", 0),
            "ended": ended, "dropped": sum(ended.values()),
            "drop_off": round(sum(ended.values()) / reached, 4) if reached else None,
            "median_answer": statistics.median(delays) if delays else None,
            "answers_timed": len(delays), "delivery": counts.get("delivery", {}),
            "loaded": step in order,
        })
    tested = flow.variants if flow else {}
    variants = [{"step": step, "variants": [row.as_dict() for row in by_variant(
        templates, raw.get("variants", {}).get(step, {}))]} for step, templates in tested.items()]
    return {"flow": name, "loaded": flow is not None, "since": since, "until": until,
            "started": raw["started"], "finished": raw["completed"],
            "ended": {k: raw["ended"].get(k, 0) for k in ENDINGS if raw["ended"].get(k)},
            "open": raw["started"] - raw["completed"] - sum(raw["ended"].values()),
            "steps": steps, "ab_tests": variants}


# -- the flow as a graph ---------------------------------------------------------------------


@dataclass
class _Node:
    name: str
    label: str  # the counts under the name
    x: int
    y: int
    kind: str  # step, finished, handoff, flow

    @property
    def middle(self) -> int:
        return self.y + NODE_H // 2


def _graph(flow: Flow | None, report: dict[str, Any]) -> dict[str, Any] | None:
    """Where to draw each step and edge: steps top to bottom in the flow's order, then where
    the flow leads (finished, a person, other flows); an edge to the next box goes straight
    down, any other curves on the right, as far out as it jumps."""
    if flow is None:
        return None
    by_step = {s["step"]: s for s in report["steps"]}
    found = edges(flow)
    ends = list(dict.fromkeys(e.target for e in found if e.kind != "ask"))
    nodes: dict[str, _Node] = {}
    for i, name in enumerate([*flow.steps, *ends]):
        y = TOP + i * (NODE_H + GAP)
        if name in flow.steps:
            s = by_step.get(name, {})
            label = (f"reached {s.get('reached', 0)} · answered {s.get('answered', 0)}"
                     f" · ended here {s.get('dropped', 0)}")
            nodes[name] = _Node(name, label, LEFT, y, "step")
        elif name == FINISHED:
            nodes[name] = _Node(name, f"{report['finished']} of {report['started']}", LEFT, y,
                                "finished")
        elif name == HANDED_OVER:
            nodes[name] = _Node(name, "turn.handoff()", LEFT, y, "handoff")
        else:
            nodes[name] = _Node(f"flow {name}", "turn.switch()", LEFT, y, "flow")
    order = list(nodes)
    lines = [_edge(nodes[e.source], nodes[e.target], e, order) for e in found
             if e.source in nodes and e.target in nodes]
    jumps = [abs(order.index(e.source) - order.index(e.target)) for e in found
             if e.source in nodes and e.target in nodes]
    width = LEFT + NODE_W + 30 + 26 * max(jumps, default=1)
    height = TOP + len(nodes) * (NODE_H + GAP)
    return {"nodes": list(nodes.values()), "edges": lines, "width": width, "height": height,
            "node_w": NODE_W, "node_h": NODE_H}


def _edge(a: _Node, b: _Node, edge: Edge, order: list[str]) -> dict[str, str]:
    jump = order.index(edge.target) - order.index(edge.source)
    if jump == 1:  # the next box: straight down
        x = a.x + NODE_W // 2
        path = f"M{x},{a.y + NODE_H} L{x},{b.y - 4}"
    else:  # out to the right, as far as it jumps, and back in
        x0, out = a.x + NODE_W, a.x + NODE_W + 26 * max(1, abs(jump))
        path = f"M{x0},{a.middle} C{out},{a.middle} {out},{b.middle} {x0 + 4},{b.middle}"
    return {"d": path, "kind": edge.kind,
            "title": f"{edge.source} → {edge.target} (turn.{edge.kind}())"}
