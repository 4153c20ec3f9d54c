"""examples/grafana/rtmsim.json: importable, and it queries only metrics that exist.

The names a panel may use are those a real server scrape and the swarm collector
emit, exactly as exposed (`_total`, `_bucket`, ...): a typo, or a counter queried
without its `_total`, fails here rather than as an empty panel.
"""

from __future__ import annotations

import json
import re
import urllib.request
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from serverproc import ROOT, ServerProcess

from loadtests.metrics import SwarmCollector

DASHBOARD = ROOT / "examples" / "grafana" / "rtmsim.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "and", "or", "unless", "inf", "nan"}
# What the dashboard shows (the list), by the metric behind it.
REQUIRED = {"rtmsim_connections_open", "rtmsim_frames_received_total",
            "rtmsim_frames_sent_total", "rtmsim_errors_total", "rtmsim_closes_total",
            "rtmsim_messages_delivered_total", "rtmsim_quota_messages_used",
            "rtmsim_fault_hits_total", "rtmsim_hold_seconds_bucket",
            "rtmsim_publish_seconds_bucket", "rtmsim_swarm_requests_total",
            "rtmsim_swarm_failures_total", "rtmsim_swarm_request_duration_seconds_bucket"}


def exposed_names(families) -> set[str]:
    """The sample names a family appears as on the wire."""
    names = set()
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: not functions, keywords, label names,
    label values, Grafana variables, durations or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # $__rate_interval, ${datasource}
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                  expr)  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_are_read_out_of_promql():
    expr = ('histogram_quantile(0.99, sum by (op, le) (rate(x_seconds_bucket{app=~"$app", '
            'le!="+Inf"}[$__rate_interval]))) / on (app) group_left max(y_total offset 5m)')
    assert metric_names(expr) == {"x_seconds_bucket", "y_total"}


def emitted(server: ServerProcess) -> set[str]:
    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=10) as resp:
        server_families = list(text_string_to_metric_families(resp.read().decode()))
    swarm = SwarmCollector(SimpleNamespace(runner=None)).describe()
    return exposed_names(server_families) | exposed_names(swarm)


def test_every_panel_queries_only_emitted_metrics(demo_server):
    dashboard = json.loads(DASHBOARD.read_text())
    names = emitted(demo_server)
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 14
    used = set()
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = metric_names(target["expr"])
            assert found, (panel["title"], target["expr"])
            assert found <= names, (panel["title"], found - names)
            used |= found
    assert used >= REQUIRED, REQUIRED - used
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert metric_names(variable["definition"].removeprefix("label_values(")
                                .partition(",")[0]) <= names


def test_the_dashboard_picks_its_prometheus_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
