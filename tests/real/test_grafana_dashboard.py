"""configs/grafana/ise-dashboard.json against a real server, on both engines: every series its queries
use is declared on ``/metrics``."""

from __future__ import annotations

import json

import httpx

from tests.helpers import DASHBOARD, dashboard_series, exposed_series
from tests.real.helpers import ServerHandle


def test_every_series_the_dashboard_queries_is_on_a_real_servers_metrics(api_server: ServerHandle) -> None:
    queried = dashboard_series(json.loads(DASHBOARD.read_text()))
    response = httpx.get(f"{api_server.root_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert sorted(queried - exposed_series(response.text)) == []
