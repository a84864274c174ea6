"""config/grafana-dashboard.json: a dashboard Grafana imports, reading only our metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edge.observe.metrics import FAMILIES

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def test_dashboard_shape() -> None:
    doc = load()
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["refId"]


def test_every_query_reads_a_metric_the_edge_exports() -> None:
    names = {f.name for f in FAMILIES}
    names |= {f.name + s for f in FAMILIES if f.file == "histogram" for s in SUFFIXES}
    doc = load()
    used: set[str] = set()
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bedge_[a-z_]+", target["expr"]))
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            used |= set(re.findall(r"\bedge_[a-z_]+", variable["definition"]))
    assert used - names == set()
    wanted = {
        "edge_requests_total",
        "edge_request_duration_seconds_bucket",
        "edge_upstream_errors_total",
        "edge_connections_open",
        "edge_tls_handshakes_total",
        "edge_proxy_header_refusals_total",
        "edge_auth_requests_total",
        "edge_tunnels_open",
        "edge_certificate_days_left",
        "edge_request_log_dropped_total",
    }
    assert wanted <= used
