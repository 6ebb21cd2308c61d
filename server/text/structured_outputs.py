"""A request's structured-output constraint, checked at the edge before any engine sees it.

The request model found it in whichever field the client spelled it with and refused two at once
(``SamplingFields.constraints``), and bounded its size while parsing
(``server/protocol/constraint_limits.py``); ``enforceable`` then compiles it with
xgrammar, the library both engines decode with (vLLM's default backend), in a worker process
under the server's time budget. So a constraint that cannot be enforced, or that would take
longer than the budget to compile, is a 400 naming the field, never a 500 from inside an engine,
never a core kept busy, and never an answer that silently ignores it.
"""

from __future__ import annotations

from server.protocol.errors import APIError, invalid_request, retry_after
from server.protocol.sampling import Constraint
from server.text.grammar_workers import CompileQueueFull, CompileTimeout, GrammarWorkers


async def enforceable(constraint: Constraint, workers: GrammarWorkers) -> Constraint:
    """The constraint, once it has compiled within the budget; a 400 ``APIError``
    naming its field otherwise. Cancelling the wait (the client left) stops the compile."""
    try:
        problem = await workers.problem(constraint.output)
    except CompileQueueFull:
        raise APIError(
            429,
            f"{workers.max_waiting} structured-output constraints already wait to be compiled "
            "(--grammar-compile-queue). Try again shortly.",
            param=constraint.param,
            code="server_overloaded",
            headers=retry_after(workers.timeout_s),
        ) from None
    except CompileTimeout:
        raise invalid_request(
            f"'{constraint.param}' did not compile into a grammar within {workers.timeout_s:g} s, this server's "
            "limit (--grammar-compile-timeout): simplify it (fewer or shorter nested repetitions and alternatives).",
            param=constraint.param,
        ) from None
    if problem is not None:
        raise invalid_request(f"'{constraint.param}' cannot be enforced: {problem}", param=constraint.param)
    return constraint
