"""Predicts a new request's time to first token from the prompt tokens queued ahead of it.

A request's first token comes once the engine has prefilled every prompt queued before it and
its own. With prefill throughput ``1/b`` tokens per second (measured under the load of the
moment: chunked prefill shares each step with the decoding requests) and a fixed cost ``a``
(a step, the sampling, the HTTP hop), TTFT = a + b * tokens. ise measures both from the requests
it serves: each first token gives one point (tokens queued ahead at admission plus its own,
observed TTFT), fitted by least squares with exponential forgetting, so the rates follow the
engine as load, prompt mix and even the CPU change. Engine-agnostic by design: it sees the same
thing for the CPU engine and vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight each older point keeps per new one: the fit follows roughly the last 1/(1-0.97) = 33 requests.
_DECAY = 0.97
_MIN_POINTS = 8


@dataclass
class TTFTModel:
    """Online weighted least squares of TTFT (seconds) on queued prompt tokens."""

    points: int = 0
    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0

    def observe(self, tokens: int, ttft_s: float) -> None:
        for name in ("_w", "_x", "_y", "_xx", "_xy"):
            setattr(self, name, getattr(self, name) * _DECAY)
        self._w += 1.0
        self._x += tokens
        self._y += ttft_s
        self._xx += tokens * tokens
        self._xy += tokens * ttft_s
        self.points += 1

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds of fixed cost, seconds per queued prompt token; None until measured.

        With too little spread in the queue sizes seen to separate the two, the whole TTFT is
        taken as per-token cost (a = 0), which over- rather than under-predicts long queues.
        """
        if self.points < _MIN_POINTS or self._x <= 0:
            return None
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x > (0.1 * mean_x) ** 2:
            b = (self._xy / self._w - mean_x * mean_y) / var_x
            a = mean_y - b * mean_x
            if b > 0 and a >= 0:
                return a, b
        return 0.0, mean_y / mean_x

    def predict(self, tokens: int) -> float | None:
        """Predicted TTFT in seconds for a request with ``tokens`` queued ahead, its own included."""
        fit = self.coefficients()
        return None if fit is None else fit[0] + fit[1] * tokens
