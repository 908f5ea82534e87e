"""Every metric a Grafana dashboard or an alert rule uses is exported by some service.

The names a service exports come from the metric definitions themselves (each group
of ``bankflow.metrics``, the lag exporter's gauges and the ``run all`` supervisor's,
registered on a fresh registry), with the series names Prometheus derives from them
(``_total`` for counters, ``_bucket``/``_sum``/``_count`` for histograms). The names
the dashboards and alerts use come from their PromQL, read by a small tokenizer. So
renaming a metric breaks this test, not a dashboard nobody looks at until the day it matters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from bankflow.metrics import METRIC_GROUPS
from bankflow.services import SupervisorMetrics
from consumers.lag_exporter import LagMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
DATASOURCES = ROOT / "infra" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

#: Series Prometheus makes itself for every target, not exported by a service.
PROMETHEUS_SERIES = frozenset({"up"})

# PromQL's aggregation operators and functions: an identifier that names one is not a
# metric (even when a ``by (...)`` clause stands between it and its parenthesis).
FUNCTIONS = frozenset(
    """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    limitk limit_ratio abs absent absent_over_time ceil changes clamp clamp_max clamp_min
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_sum
    histogram_stddev histogram_stdvar holt_winters double_exponential_smoothing hour idelta
    increase irate label_join label_replace ln log2 log10 minute month predict_linear rate
    resets round scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time
    timestamp vector year avg_over_time min_over_time max_over_time sum_over_time
    count_over_time quantile_over_time stddev_over_time stdvar_over_time last_over_time
    present_over_time mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan
    tanh deg pi rad
    """.split()  # noqa: SIM905 - PromQL's list, as its documentation prints it
)
#: Keywords followed by a parenthesised list of label names, which are not metrics.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OPERATORS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

TOKEN = re.compile(
    r"""
      "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`    # strings
    | \{[^}]*\}                                         # label matchers
    | \[[^\]]*\]                                        # ranges and subqueries
    | \d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*    # numbers and durations
    | [A-Za-z_:][A-Za-z0-9_:]*                          # identifiers
    | \S                                                # any other character
    """,
    re.VERBOSE,
)
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    tokens = TOKEN.findall(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in LABEL_LISTS and following == "(":
            i = tokens.index(")", i)  # label lists hold no parentheses
        elif IDENTIFIER.fullmatch(token) and not (
            token in FUNCTIONS or token in OPERATORS or following == "("
        ):
            names.add(token)
        i += 1
    return names


def exported_names() -> set[str]:
    """Every series name some service exports, from the metric definitions."""
    registry = CollectorRegistry()
    for group in METRIC_GROUPS:
        group(registry)
    LagMetrics(registry)
    SupervisorMetrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included."""
    found = []
    for panel in items:
        found.append(panel)
        found += panels(panel.get("panels", []))
    return found


def dashboard_exprs(path: Path) -> list[str]:
    document = json.loads(path.read_text())
    return [t["expr"] for p in panels(document["panels"]) for t in p.get("targets", [])]


def alert_exprs() -> list[tuple[str, str]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [
        (rule.get("alert") or rule["record"], str(rule["expr"]))
        for group in document["groups"]
        for rule in group["rules"]
    ]


def test_the_tokenizer_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route="/x",'
        'status=~"5.."}[5m]))) > 1e3 unless on (job) group_left (instance) b_total offset 5m'
        " / ignoring(x) sum without (y) (c:recorded[1h:1m]) and d == bool 0.5"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:recorded", "d"}


def test_there_are_dashboards_and_alerts_to_check() -> None:
    assert {p.name for p in DASHBOARDS} >= {"pipeline.json", "ledger.json"}
    assert len(alert_exprs()) >= 6


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_metric_a_dashboard_uses_is_exported(path: Path) -> None:
    exprs = dashboard_exprs(path)
    assert exprs, f"{path.name} has no queries"
    known = exported_names() | PROMETHEUS_SERIES
    unknown = {(name, expr) for expr in exprs for name in metric_names(expr) if name not in known}
    assert unknown == set()
    assert all(metric_names(expr) for expr in exprs), "a query that reads no metric"


def test_every_metric_an_alert_rule_uses_is_exported() -> None:
    known = exported_names() | PROMETHEUS_SERIES
    unknown = {
        (alert, name)
        for alert, expr in alert_exprs()
        for name in metric_names(expr)
        if name not in known
    }
    assert unknown == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_use_the_provisioned_datasource(path: Path) -> None:
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    document = json.loads(path.read_text())
    assert document["uid"] and document["title"]
    for panel in panels(document["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_every_exported_metric_is_documented() -> None:
    """docs/architecture.md lists every metric, so its table cannot fall behind."""
    docs = (ROOT / "docs" / "architecture.md").read_text()
    registry = CollectorRegistry()
    for group in METRIC_GROUPS:
        group(registry)
    SupervisorMetrics(registry)
    missing = [
        f.name + ("_total" if f.type == "counter" else "")
        for f in registry.collect()
        if f.name + ("_total" if f.type == "counter" else "") not in docs
    ]
    assert missing == []
