"""deploy/: the Prometheus alerts and the Grafana dashboard stay true to the metrics.

Every expression of ``deploy/prometheus/alerts.yaml`` and ``deploy/grafana/tokendealer.json``
is read by a small PromQL lexer: each metric name it references must be one the service
exports (a histogram's with ``_bucket``, ``_sum`` or ``_count``), each function a PromQL
function, counters only under ``rate``/``increase`` and gauges never. Then ``promtool``
checks the rules, runs their unit tests (``deploy/prometheus/alerts_test.yaml``) and parses
every dashboard query; without promtool that test skips, and fails under ``CI=true``
(``.ci/run`` installs Debian's ``prometheus`` package).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import IN_CI

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokendealer.json"
README = ROOT / "README.rst"

COUNTERS = {
    "tokendealer_tokens_issued_total",
    "tokendealer_token_errors_total",
    "tokendealer_client_auth_failures_total",
    "tokendealer_rate_limited_total",
    "tokendealer_rate_limit_monitored_total",
    "tokendealer_introspections_total",
    "tokendealer_revocations_total",
    "tokendealer_store_errors_total",
    "tokendealer_early_token_requests_total",
}
HISTOGRAMS = {"tokendealer_request_duration_seconds", "tokendealer_signing_duration_seconds"}
GAUGES = {
    "tokendealer_store_up",
    "tokendealer_rate_limit_store_up",
    "tokendealer_signing_key_info",
    "tokendealer_active_key_age_seconds",
}
#: What may stand where a metric name stands: counters, gauges, a histogram's series.
KNOWN_METRICS = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
#: Series that only grow: only ever read through rate() or increase().
MONOTONIC = COUNTERS | {name for name in KNOWN_METRICS if name.endswith(("_bucket", "_count"))}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time",
    "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "offset", "bool", "inf", "nan"}
RANGE_FUNCTIONS = {"rate", "increase", "irate"}
#: Functions that ask whether a series exists, whatever its value: fine on a counter.
PRESENCE_FUNCTIONS = {"absent", "group", "count"}

_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
    r"|(?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_:]*)"
    r"|(?P<space>\s+)"
    r"|(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:@])"
)
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana has put its variables in."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of every token; anything else is a syntax error."""
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise AssertionError(f"cannot read {expr[position:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group()
        position = match.end()


def metric_references(expr: str) -> list[tuple[str, str | None]]:
    """Each metric name the PromQL expression selects, with the function applied to it
    directly (``rate`` in ``rate(x[5m])``), after checking that the brackets balance, that
    every function is a PromQL one and that every range is a duration."""
    found: list[tuple[str, str | None]] = []
    # Open brackets: the bracket, the function it calls, whether it lists labels.
    stack: list[tuple[str, str | None, bool]] = []
    items = list(tokens(expr))
    closing = {")": "(", "}": "{", "]": "["}
    for index, (kind, text) in enumerate(items):
        previous = items[index - 1][1] if index else ""
        following = items[index + 1][1] if index + 1 < len(items) else ""
        if stack and stack[-1][0] == "[" and text not in closing:
            duration = kind == "number" and re.fullmatch(_DURATION, text)
            assert duration or text == ":", f"range {text!r} is no duration in {expr!r}"
        aggregating = text in AGGREGATIONS and following in GROUPING  # sum by (...) (...)
        if kind == "op" and text in "({[":
            called = _called(items, index) if text == "(" else None
            stack.append((text, called, text == "(" and previous.lower() in GROUPING))
        elif kind == "op" and text in closing:
            assert stack and stack[-1][0] == closing[text], f"unbalanced {text!r} in {expr!r}"
            stack.pop()
        elif kind == "name" and stack and (stack[-1][0] == "{" or stack[-1][2]):
            continue  # a label name: in a matcher, or in by (...), on (...), ...
        elif kind == "name" and text.lower() in KEYWORDS:
            continue
        elif kind == "name" and (following == "(" or aggregating):
            assert text in FUNCTIONS | AGGREGATIONS, f"unknown function {text!r} in {expr!r}"
        elif kind == "name":
            found.append((text, stack[-1][1] if stack else None))
    assert not stack, f"unclosed {stack[-1][0]!r} in {expr!r}"
    return found


def _called(items: list[tuple[str, str]], index: int) -> str | None:
    """The function or aggregation that the bracket at ``index`` calls: the word before
    it, or the aggregation before a label list (``sum by (le) (``)."""
    previous = items[index - 1][1] if index else ""
    if previous == ")":
        depth = 0
        for back in range(index - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(items[back][1], 0)
            if depth == 0:
                if back >= 2 and items[back - 1][1] in GROUPING:
                    previous = items[back - 2][1]
                break
    return previous if previous in FUNCTIONS | AGGREGATIONS else None


def check_expression(expr: str) -> set[str]:
    """Assert the expression reads only known metrics, counters through rate() or
    increase() (or only their presence) and gauges never; return the metric names it
    reads."""
    names = set()
    for name, function in metric_references(expr):
        assert name in KNOWN_METRICS, f"unknown metric {name!r} in {expr!r}"
        if name in MONOTONIC:
            assert function in RANGE_FUNCTIONS | PRESENCE_FUNCTIONS, (
                f"{name} outside rate()/increase() in {expr!r}"
            )
        else:
            assert function not in RANGE_FUNCTIONS, f"{function}() of the gauge {name} in {expr!r}"
        names.add(name)
    for quantile in re.finditer(r"histogram_quantile\(", expr):
        argument = expr[quantile.end() :]
        grouping = re.match(r"[\d.]+,\s*sum (by|without) \(([^)]*)\)", argument)
        assert grouping, f"histogram_quantile must read a sum over le: {expr!r}"
        keeps_le = ("le" in re.split(r"[\s,]+", grouping[2])) == (grouping[1] == "by")
        assert keeps_le, f"histogram_quantile must read a sum over le: {expr!r}"
        assert "_bucket" in argument, expr
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_expressions() -> list[str]:
    """Every query of the dashboard: its panels' and its query variables' (the metric
    argument of ``label_values``)."""
    expressions = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            expressions.append(match.group(1))
    return expressions


def readme_headings() -> set[str]:
    lines = README.read_text().splitlines()
    return {
        title
        for title, underline in itertools.pairwise(lines)
        if title and re.fullmatch(r"([-=~^])\1+", underline) and len(underline) >= len(title)
    }


# -- the lexer itself ------------------------------------------------------------------

BUCKETS = "tokendealer_request_duration_seconds_bucket"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("sum(rate(tokendealer_token_issued_total[5m]))", "unknown metric"),
        ('tokendealer_store_up{job="x"} == 0 and up', "unknown metric"),
        (f"histogram_quantle(0.99, sum by (le) (rate({BUCKETS}[5m])))", "unknown function"),
        (f"histogram_quantile(0.99, rate({BUCKETS}[5m]))", "sum over le"),
        (f"histogram_quantile(0.99, sum by (endpoint) (rate({BUCKETS}[5m])))", "sum over le"),
        (f"histogram_quantile(0.99, sum without (le) (rate({BUCKETS}[5m])))", "sum over le"),
        ("sum(rate(tokendealer_revocations_total[5m])", "unclosed"),
        ("rate(tokendealer_revocations_total[5m)", "unbalanced"),
        ("rate(tokendealer_revocations_total[5x])", "no duration"),
        ("rate(tokendealer_revocations_total[5])", "no duration"),
        ("tokendealer_store_up ~ 1", "cannot read"),
        ("tokendealer_revocations_total > 3", "outside rate"),
        ("sum(tokendealer_revocations_total)", "outside rate"),
        ("rate(tokendealer_store_up[5m])", "of the gauge"),
    ],
)
def test_the_checker_refuses_wrong_expressions(expr: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_expression(expr)


def test_the_checker_reads_grouping_and_matchers() -> None:
    expr = (
        'sum without (instance, pid) (rate(tokendealer_early_token_requests_total{job=~"a|b"}[1h]))'
        " / on (client_id) group_left () sum by (client_id) "
        "(increase(tokendealer_tokens_issued_total[1h] offset 5m)) > 0.5 "
        "and max without (pid, kid) (tokendealer_signing_key_info) > 32 * 86400"
    )
    assert check_expression(expr) == {
        "tokendealer_early_token_requests_total",
        "tokendealer_tokens_issued_total",
        "tokendealer_signing_key_info",
    }


# -- alerts.yaml ------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "TokendealerStoreDown",
    "TokendealerRateLimitStoreDown",
    "TokendealerSigningKeyTooOld",
    "TokendealerNoActiveSigningKey",
    "TokendealerClientAuthFailureSpike",
    "TokendealerTokenErrorSpike",
    "TokendealerRateLimitedSpike",
    "TokendealerTokenWaste",
    "TokendealerSlowTokenEndpoint",
}


def test_alert_rules_reference_only_known_metrics() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert check_expression(rule["expr"]), rule["alert"]


def test_alert_rules_have_severity_annotations_and_a_runbook_in_the_readme() -> None:
    headings = readme_headings()
    readme = README.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert "{{ $labels." in annotations["summary"] + annotations["description"], name
        runbook = annotations["runbook"]
        assert runbook.startswith("README.rst, "), name
        quoted = re.findall(r'"([^"]+)"', runbook)
        assert quoted and quoted[0] in headings, f"{name}: {quoted[:1]} is no README heading"
        for phrase in quoted:
            assert phrase in headings or f"**{phrase}" in readme, f"{name}: {phrase!r} missing"


def test_key_age_threshold_is_the_documented_rotation_policy() -> None:
    """README.rst documents monthly rotation; the alert's threshold (32 days) is named in
    its annotation and is where the dashboard's key age panel turns red."""
    rotation = README.read_text().split("Operations: rotating keys\n", 1)[1]
    assert "**Routine rotation** (e.g. monthly" in rotation
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "TokendealerSigningKeyTooOld"]
    match = re.search(r"> (\d+) \* 86400$", rule["expr"])
    assert match, rule["expr"]
    days = int(match.group(1))
    assert 31 < days <= 35
    assert "monthly" in rule["annotations"]["description"]
    assert f"threshold is {days} days" in rule["annotations"]["description"]
    (panel,) = [panel for panel in dashboard_panels() if panel["title"] == "Active key age"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "red", "value": days * 86400}


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text())
    assert document["rule_files"] == ["alerts.yaml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
        for series in test["input_series"]:
            check_expression(_as_selected(series["series"]))
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert quiet == names


def _as_selected(series: str) -> str:
    """An input series as an expression that reads it the way the service's metric type
    allows (a counter through rate())."""
    name = series.split("{", 1)[0]
    return f"rate({series}[5m])" if name in MONOTONIC else series


# -- tokendealer.json -------------------------------------------------------------------


def test_dashboard_reads_only_known_metrics_and_shows_every_one() -> None:
    shown: set[str] = set()
    for expr in dashboard_expressions():
        shown |= check_expression(grafana_to_promql(expr))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    assert families >= COUNTERS | GAUGES | HISTOGRAMS


def test_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "tokendealer"
    assert board["id"] is None
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["job"]["datasource"] == source
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in dashboard_panels():
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            if "[" in target["expr"] and "$__rate_interval" not in target["expr"]:
                assert "[1h]" in target["expr"], f"{panel['title']}: a fixed range other than 1h"


def test_dashboard_has_the_operator_panels() -> None:
    panels = {panel["title"]: panel for panel in dashboard_panels()}
    wanted = {
        "Tokens issued/s by client": ("tokendealer_tokens_issued_total", "client_id"),
        "Token errors/s by error": ("tokendealer_token_errors_total", "error"),
        "Client authentication failures/s by method": (
            "tokendealer_client_auth_failures_total",
            "method",
        ),
        "Rate-limited requests/s by endpoint": ("tokendealer_rate_limited_total", "endpoint"),
        "Request latency p50 / p99 by endpoint": (
            "tokendealer_request_duration_seconds_bucket",
            "le, endpoint",
        ),
        "Signing p99 by alg": ("tokendealer_signing_duration_seconds_bucket", "le, alg"),
        "Introspections/s: active and inactive": ("tokendealer_introspections_total", "active"),
        "Store up": ("tokendealer_store_up", "instance"),
        "Rate-limit store up": ("tokendealer_rate_limit_store_up", "instance"),
        "Signing keys": ("tokendealer_signing_key_info", "kid, state, alg"),
        "Active key age": ("tokendealer_active_key_age_seconds", "instance"),
        "Token waste by client: share of early token requests (1h)": (
            "tokendealer_early_token_requests_total",
            "client_id",
        ),
    }
    for title, (metric, grouping) in wanted.items():
        assert title in panels, title
        exprs = [target["expr"] for target in panels[title]["targets"]]
        assert all(metric in expr and f"by ({grouping}" in expr for expr in exprs), title
    latency_panel = panels["Request latency p50 / p99 by endpoint"]
    latency = [target["expr"] for target in latency_panel["targets"]]
    assert [expr.split(",")[0] for expr in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]
    assert panels["Signing keys"]["type"] == "table"
    assert panels["Signing keys"]["targets"][0]["format"] == "table"


# -- promtool ---------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(f"{reason}; set CI=true to make this a failure")
    return found


def run_promtool(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_rules() -> None:
    output = run_promtool("check", "rules", "deploy/prometheus/alerts.yaml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    output = run_promtool("test", "rules", "deploy/prometheus/alerts_test.yaml")
    assert "SUCCESS" in output


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each dashboard query, its Grafana variables filled in, as a recording rule."""
    expressions = dashboard_expressions()
    rules = [
        {"record": f"tokendealer:dashboard_query_{index}", "expr": grafana_to_promql(expr)}
        for index, expr in enumerate(expressions)
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_readme_names_the_files_and_every_alert() -> None:
    section = README.read_text().split("Alerts and dashboard\n--------------------\n", 1)[1]
    section = section.split("\n----", 1)[0]
    for path in (ALERTS, ALERTS_TEST, DASHBOARD):
        assert f"``{path.relative_to(ROOT)}``" in section
    for rule in alert_rules():
        assert f"``{rule['alert']}``" in section, rule["alert"]
