"""The pack's HTTP routes on ComfyUI's server (registered when the pack loads).

POST /adjoint_guidance/schedule/timeline: the time line a Prompt Schedule or Conditioning
Schedule would show for the given widgets, computed by the node's own code (its `preview`,
the path its execute takes), so the frontend can draw it while the user types:

    {"node": "AdjointGuidance_PromptSchedule", "text": "0: a cat\\n50%: a dog",
     "steps": 20, "interpolation": "hold", "scheduler": "normal"}
    {"node": "AdjointGuidance_ConditioningSchedule", "times": "0, 50%", "steps": 20,
     "interpolation": "hold", "scheduler": "normal", "inputs": ["conditioning_1", ...]}

→ 200 {"timeline": <the node's ui["adjoint_guidance_timeline"][0]>}, or 200 {"error":
{"message", "detail", "line", "column", "input"}} for a schedule the node would refuse
(line / column 1-based, null when the problem has no place in the text); a malformed
request (not JSON, missing or mistyped fields) → 400 {"error": {"message"}}.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

import comfy.samplers

from ..adjoint.timeline import INTERPOLATIONS
from . import schedule_conditioning as sc
from .prompt_schedule import ConditioningSchedule, PromptSchedule

TIMELINE_ROUTE = "/adjoint_guidance/schedule/timeline"
NODES = {"AdjointGuidance_PromptSchedule": (PromptSchedule, "text"),
         "AdjointGuidance_ConditioningSchedule": (ConditioningSchedule, "times")}


class BadRequest(ValueError):
    """A request the route cannot read; its message says which field and what is allowed."""


def _field(body: dict, name: str, check: Callable[[Any], bool], allowed: str):
    if name not in body:
        raise BadRequest(f"{TIMELINE_ROUTE}: {name}: missing; expected {allowed}")
    value = body[name]
    if not check(value):
        raise BadRequest(f"{TIMELINE_ROUTE}: {name}: expected {allowed}, got {value!r:.80}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_request(body) -> tuple[type, dict]:
    """(node class, keyword arguments of its preview) from the request's JSON, or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest(f"{TIMELINE_ROUTE}: expected a JSON object, got {type(body).__name__}")
    node = _field(body, "node", lambda v: v in NODES, " or ".join(repr(n) for n in NODES))
    cls, text_name = NODES[node]
    args = {
        text_name: _field(body, text_name, lambda v: isinstance(v, str), "text (a string)"),
        "steps": _field(body, "steps", lambda v: _is_int(v) and 1 <= v <= sc.MAX_STEPS,
                        f"an integer from 1 to {sc.MAX_STEPS}"),
        "interpolation": _field(body, "interpolation", lambda v: v in INTERPOLATIONS,
                                "one of " + ", ".join(INTERPOLATIONS)),
        "scheduler": _field(body, "scheduler", lambda v: v in comfy.samplers.SCHEDULER_NAMES,
                            "one of " + ", ".join(comfy.samplers.SCHEDULER_NAMES)),
    }
    if cls is ConditioningSchedule and body.get("inputs") is not None:
        args["names"] = _field(body, "inputs", lambda v: isinstance(v, list) and v
                               and all(isinstance(n, str) for n in v),
                               "a non-empty list of the connected conditioning inputs' names")
    return cls, args


def schedule_error(e: ValueError, input_name: str) -> dict:
    """The route's error object for a ValueError of a schedule node."""
    return {"message": str(e), "detail": getattr(e, "detail", str(e)), "input": input_name,
            "line": getattr(e, "line", None), "column": getattr(e, "column", None)}


def timeline_response(body) -> tuple[int, dict]:
    """(HTTP status, JSON body) for a request body: the route without aiohttp."""
    try:
        cls, args = read_request(body)
    except BadRequest as e:
        return 400, {"error": {"message": str(e)}}
    try:
        return 200, {"timeline": cls.preview(**args)}
    except ValueError as e:
        return 200, {"error": schedule_error(e, NODES[cls.define_schema().node_id][1])}


def register(server) -> bool:
    """Add the routes to a PromptServer; False when there is none (ComfyUI imported without one)."""
    if server is None:
        return False
    if getattr(server, "_adjoint_guidance_routes", False):     # the pack imported again
        return True
    from aiohttp import web

    @server.routes.post(TIMELINE_ROUTE)
    async def schedule_timeline(request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": f"{TIMELINE_ROUTE}: the body is not JSON; send "
                                                           "a JSON object such as {\"node\": ..., \"text\": ...}"}},
                                     status=400)
        # off the event loop: a long schedule takes a moment, and the server keeps serving meanwhile
        status, answer = await asyncio.get_running_loop().run_in_executor(None, timeline_response, body)
        return web.json_response(answer, status=status)

    server._adjoint_guidance_routes = True
    return True


def prompt_server() -> Optional[object]:
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def register_routes() -> bool:
    try:
        return register(prompt_server())
    except Exception:      # a route must never keep the nodes from loading
        logging.exception("Adjoint Guidance: could not register the HTTP routes")
        return False
