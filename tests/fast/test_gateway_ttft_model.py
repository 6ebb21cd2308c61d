"""The TTFT model alone: the line it fits through (queued prompt tokens, time to first token)
points, which admission asks for a request's predicted wait before the SLO check."""

from __future__ import annotations

import math

import pytest

from server.gateway.ttft_model import TTFTModel


@pytest.mark.parametrize(("a", "b"), [(0.05, 0.1), (0.0, 0.002), (0.3, 1e-5), (0.012, 0.0007)])
def test_ttft_model_recovers_a_line(a: float, b: float) -> None:
    model = TTFTModel()
    for tokens in [7, 300, 45, 1200, 80, 16, 640, 2048, 3, 999]:
        model.observe(tokens, a + b * tokens)
    fit = model.coefficients()
    assert fit is not None
    assert fit[0] == pytest.approx(a, abs=1e-9) and fit[1] == pytest.approx(b, rel=1e-9)
    assert model.predict(500) == pytest.approx(a + b * 500)


def test_ttft_model_needs_eight_points() -> None:
    model = TTFTModel()
    for tokens in range(1, 8):
        model.observe(tokens * 10, 0.01 * tokens)
        assert model.coefficients() is None and model.predict(100) is None
    model.observe(80, 0.08)
    assert model.predict(100) == pytest.approx(0.1)


def test_ttft_model_without_spread_charges_it_all_per_token() -> None:
    model = TTFTModel()
    for _ in range(10):
        model.observe(100, 0.5)
    assert model.coefficients() == pytest.approx((0.0, 0.005))
    assert model.predict(200) == pytest.approx(1.0)  # over-, not under-predicts a longer queue


def test_ttft_model_never_fits_a_falling_line() -> None:
    model = TTFTModel()
    for tokens in range(10, 110, 10):
        model.observe(tokens, 2.0 - 0.01 * tokens)  # longer queues faster: noise, not physics
    fit = model.coefficients()
    assert fit is not None
    a, b = fit
    assert a == 0.0 and b > 0
    assert all(model.predict(t) or 0 > 0 for t in (1, 100, 10000))


def test_ttft_model_follows_a_changed_engine() -> None:
    model = TTFTModel()
    for tokens in range(10, 410, 10):
        model.observe(tokens, 0.05 + 0.001 * tokens)
    for tokens in list(range(10, 410, 10)) * 5:  # the engine became ten times slower per token
        model.observe(tokens, 0.05 + 0.01 * tokens)
    fit = model.coefficients()
    assert fit is not None and fit[1] == pytest.approx(0.01, rel=0.01) and fit[0] == pytest.approx(0.05, abs=0.01)


def test_ttft_model_fits_noisy_points() -> None:
    model = TTFTModel()
    for i, tokens in enumerate(range(20, 2020, 20)):
        noise = 0.01 * math.sin(i * 2.3)
        model.observe(tokens, 0.1 + 0.002 * tokens + noise)
    fit = model.coefficients()
    assert fit is not None and fit[0] == pytest.approx(0.1, abs=0.02) and fit[1] == pytest.approx(0.002, rel=0.05)
