"""The deploy assets (deploy/prometheus/*.yml, deploy/grafana/hfserve.json) and the docs are held
to the metric catalogue: every query names only series GET /metrics serves, the alert rules
pass `promtool check rules` and their own `promtool test rules` suite, and the example
Prometheus config passes `promtool check config`.

promtool comes from the Debian `prometheus` package (`make test` installs it); without it the
promtool tests skip (fail under CI=true), and the catalogue checks still run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from observability.catalogue import CATALOGUE, sample_names
from tests.conftest import PROMETHEUS_INSTALL, ROOT, missing_tool

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hfserve.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Series Prometheus makes itself for every target, not hfserve's (alerts.yml watches `up`).
PROMETHEUS_SERIES = frozenset({"up"})

# ---- PromQL metric names

# Words that stand where a metric name could but are not one. Functions and aggregations need
# no list: they are the identifiers followed by "(".
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")  # label matchers; strings (which may hold braces) are gone by then
_RANGE = re.compile(r"\[[^\[\]]*\]")  # [5m], [1h:1m], [$__rate_interval]
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
# An identifier not glued to a preceding word, dot or colon: skips the "m" of "5m" and the
# "e3" of "1e3".
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers once strings, label
    matchers, label lists, ranges and Grafana variables are cut out, minus functions
    (followed by "(") and keywords."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)  # also leaves `sum (` for `sum by (model) (`: a function
    text = _GRAFANA_VARIABLE.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def unknown_metrics(queries: dict[str, str]) -> list[str]:
    """One line per query naming a metric /metrics does not serve; `queries` maps where a
    query is (for the message) to its text."""
    known = sample_names() | PROMETHEUS_SERIES
    problems = []
    for where, expr in queries.items():
        unknown = sorted(metric_names(expr) - known)
        if unknown:
            problems.append(f"{where}: unknown metric {', '.join(unknown)} (not in observability/catalogue.py)")
    return problems


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> dict[str, str]:
    queries = {}
    board = dashboard()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['id']} ({panel['title']}) target {target.get('refId')}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        # label_values(<selector>, <label>): the selector is PromQL
        selector = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        queries[f"variable {variable['name']}"] = selector.group(1) if selector else query
    return queries


def test_metric_names_skips_functions_labels_durations_and_strings():
    expr = """
        histogram_quantile(0.99, sum by (model, le) (rate(hf_server_request_duration_seconds_bucket{model=~"a|b", le!="1e3"}[5m] offset 1h)))
        > 1e3 and on (model) group_left (endpoint) sum without (key_id) (hf_server_requests_total{status=~"5.."})
        unless max_over_time((max(hf_server_models_loaded))[1h:1m]) > bool 0
        or label_replace(up{job="hfserve"}, "x", "$1", "instance", "(.*)") * Inf
        or sum(rate(hf_server_prompt_tokens_total{model=~"$model"}[$__rate_interval]))
    """
    assert metric_names(expr) == {
        "hf_server_request_duration_seconds_bucket", "hf_server_requests_total", "hf_server_models_loaded",
        "up", "hf_server_prompt_tokens_total",
    }


def test_the_checker_catches_a_made_up_metric():
    queries = {
        "good": "sum by (model) (rate(hf_server_requests_total[5m]))",
        "bad": 'sum by (model) (rate(hf_server_made_up_total{model="x"}[5m])) / hf_server_requests_total',
    }
    assert unknown_metrics(queries) == [
        "bad: unknown metric hf_server_made_up_total (not in observability/catalogue.py)"
    ]
    # Ray's prefixed names are not what /metrics serves either.
    assert unknown_metrics({"ray": "ray_hf_server_requests_total"})


def test_alert_rules_query_only_catalogue_metrics():
    queries = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    assert queries
    assert unknown_metrics(queries) == []


def test_dashboard_queries_only_catalogue_metrics():
    queries = dashboard_queries()
    assert queries
    assert unknown_metrics(queries) == []


def test_every_alert_is_complete_and_has_a_firing_and_a_quiet_test_case():
    tested: dict[str, set[bool]] = {}
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            tested.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    documented = OPERATIONS.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert "for" in rule, f"{name} has no `for:`"
        assert rule["labels"].get("severity") in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        if "by (model" in rule["expr"]:  # one alert per model: say which
            assert "{{ $labels.model }}" in annotations["summary"], f"{name}'s summary does not name the model"
        assert tested.get(name) == {True, False}, f"{name} needs a firing and a quiet case in alerts_test.yml"
        assert name in documented, f"{name} has no runbook line in docs/operations.md"


def test_docs_list_every_catalogue_metric():
    documented = OPERATIONS.read_text()
    missing = [spec.name for spec in CATALOGUE if f"`{spec.name}`" not in documented]
    assert missing == [], f"docs/operations.md does not list {missing}"


def test_dashboard_panels_are_well_formed():
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in board["panels"]:
        where = f"panel {panel['id']} ({panel.get('title')})"
        assert panel.get("datasource"), f"{where} has no datasource"
        targets = panel.get("targets") or []
        assert targets, f"{where} has no target"
        ref_ids = [target.get("refId") for target in targets]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), f"{where}: refIds {ref_ids}"
        assert all(target.get("expr", "").strip() for target in targets), f"{where} has an empty query"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"] == "label_values(hf_server_requests_total, model)"


# ---- promtool

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool("promtool", PROMETHEUS_INSTALL)
    return path


def run_promtool(*args: str, cwd: Path = ROOT) -> None:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def test_promtool_checks_the_alert_rules():
    run_promtool("check", "rules", str(ALERTS))


def test_promtool_runs_the_alert_rule_tests():
    run_promtool("test", "rules", str(ALERTS_TEST))


def test_promtool_parses_every_dashboard_query(tmp_path):
    # promtool parses PromQL only in rule files, so each query becomes a recording rule, with
    # Grafana's variables replaced by values Prometheus accepts.
    rules = [
        {"record": f"hfserve_dashboard:query_{number}",
         "expr": expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$model", ".*")}
        for number, expr in enumerate(dashboard_queries().values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


def test_promtool_checks_the_example_config(tmp_path):
    # promtool opens the credentials file the config names (/etc/prometheus/... on a real
    # host), so check a copy that points at a stand-in key, next to a copy of alerts.yml.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    hfserve = jobs["hfserve"]
    assert hfserve["metrics_path"] == "/metrics"
    assert hfserve["authorization"]["type"] == "Bearer" and hfserve["authorization"]["credentials_file"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]

    key = tmp_path / "hfserve-admin.key"
    key.write_text("hf_stand_in_admin_key\n")
    hfserve["authorization"]["credentials_file"] = str(key)
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
