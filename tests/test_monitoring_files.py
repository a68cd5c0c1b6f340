"""Static checks of the monitoring files: deploy/grafana, deploy/prometheus.

Every query in the Grafana dashboard and every alert rule may name only the farm's
metrics (tests/metrics_contract.py), with their own labels and label values; farm-wide
figures are taken with max() across dashboard replicas, never sum(); every alert has a
`for:`, a severity and a summary; the scrape config finds the Services deploy/k8s
defines, with the dashboard's token from a file. No Prometheus is needed (promtool, when
installed, checks the files too).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import metrics_contract as contract

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_JSON = ROOT / "deploy" / "grafana" / "renderfarm-dashboard.json"
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
SCRAPE = PROM_DIR / "scrape.yml"
K8S_DIR = ROOT / "deploy" / "k8s"

# PromQL's own words: functions and aggregations (followed by "("), and keywords.
FUNCTIONS = {
    *("sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group"),
    *("rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear"),
    *("histogram_quantile", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round"),
    *("absent", "absent_over_time", "max_over_time", "min_over_time", "avg_over_time"),
    *("time", "vector", "scalar", "label_replace", "changes", "resets", "sort_desc"),
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
LABEL_VALUES = {
    "worker_class": set(contract.PENDING_CLASSES),
    "priority": set(contract.PRIORITIES),
    "outcome": set(contract.OUTCOMES),
    "stage": set(contract.STAGES),
    "state": set(contract.WORKER_STATES),
    "result": set(contract.AFFINITY_RESULTS),
}


@dataclass
class Query:
    """What a PromQL expression names: series, label matchers, grouping labels, functions."""

    expr: str
    series: set[str] = field(default_factory=set)
    matchers: list[tuple[str | None, str, str, str]] = field(default_factory=list)
    grouping: list[tuple[str, set[str]]] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    q = Query(expr)
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery windows ($__rate_interval)
    for m in SELECTOR.finditer(text):
        body = m.group(2).strip()
        pos = 0
        while pos < len(body):
            mm = MATCHER.match(body, pos)
            assert mm, f"cannot read the label matchers {body!r} in {expr!r}"
            q.matchers.append((m.group(1), mm.group(1), mm.group(2), mm.group(3)))
            pos = mm.end()
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    for m in LABEL_LISTS.finditer(text):
        q.grouping.append((m.group(1), {w.strip() for w in m.group(2).split(",") if w.strip()}))
    text = LABEL_LISTS.sub(" ", text)  # `max by (x) (...)` reads as the call `max (...)`
    for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if re.fullmatch(r"\d\w*", word) or word.lower() in KEYWORDS:
            continue
        if call:
            q.functions.append(word)
        elif word in contract.series_names():
            q.series.add(word)
        else:
            q.unknown.add(word)
    return q


def labels_of(series: str) -> set[str]:
    """The labels a query may use on one series: its metric's, the target's, `le` on buckets."""
    labels = set(contract.series_names()[series][1].labels | contract.TARGET_LABELS)
    return labels | {"le"} if series.endswith("_bucket") else labels


def check_query(expr: str, where: str) -> Query:
    """Every name in `expr` is a contract series with its own labels and values."""
    q = parse_promql(expr)
    assert q.series, f"{where}: {expr!r} names no farm metric"
    assert not q.unknown, f"{where}: not metrics of the contract: {sorted(q.unknown)} in {expr!r}"
    bad = [f for f in q.functions if f not in FUNCTIONS]
    assert not bad, f"{where}: unknown PromQL functions {bad} in {expr!r}"
    own_labels = set().union(*(labels_of(series) for series in q.series))
    for metric, label, op, value in q.matchers:
        labels = own_labels if metric is None else labels_of(metric)
        assert label in labels, f"{where}: {metric} has no label {label!r}: {expr!r}"
        if label in LABEL_VALUES and "$" not in value and value != ".*":
            words = value.split("|") if op in ("=~", "!~") else [value]
            unknown = [w for w in words if w not in LABEL_VALUES[label]]
            assert not unknown, f"{where}: {label} values {unknown} do not exist: {expr!r}"
    for keyword, labels in q.grouping:
        missing = labels - own_labels
        assert not missing, (
            f"{where}: {keyword} ({', '.join(sorted(missing))}) not labels of {sorted(q.series)}"
        )
    return q


def check_farm_wide_max(q: Query, where: str) -> None:
    """Dashboard figures are the same on every replica: aggregate them with max, not sum,
    except where a max() over replicas is nested inside (max by (worker) → sum by class)."""
    dashboard_series = {s for s in q.series if contract.series_names()[s][0] in contract.DASHBOARD}
    if not dashboard_series:
        return
    aggs = [f for f in q.functions if f in {"sum", "max", "min", "avg", "count"}]
    if not aggs and q.functions == ["absent"]:
        return  # whether any replica is scraped at all
    assert "max" in aggs, f"{where}: farm-wide figures need max() across replicas: {q.expr!r}"
    if "sum" in aggs and not re.search(r"\bsum\s+without\b", q.expr):
        assert re.search(r"sum by \([\w, ]+\) \(max by", q.expr), (
            f"{where}: sum() across dashboard replicas counts each figure once per replica; "
            f"take max() first: {q.expr!r}"
        )


def test_the_query_reader_sees_what_a_query_names():
    q = parse_promql(
        "histogram_quantile(0.95, max by (le, stage) (rate(renderfarm_job_stage_seconds_bucket"
        '{stage=~"render|upload", worker="$w"}[$__rate_interval])))'
        " / ignoring(x) renderfarm_nope unless on () renderfarm_workers > 0"
    )
    assert q.series == {"renderfarm_job_stage_seconds_bucket", "renderfarm_workers"}
    assert q.unknown == {"renderfarm_nope"}
    assert ("renderfarm_job_stage_seconds_bucket", "stage", "=~", "render|upload") in q.matchers
    assert ("by", {"le", "stage"}) in q.grouping and ("ignoring", {"x"}) in q.grouping
    assert q.functions == ["histogram_quantile", "max", "rate"]
    with pytest.raises(AssertionError, match="no label 'owner'"):
        check_query('max(renderfarm_jobs_running{owner="alice"})', "example")
    with pytest.raises(AssertionError, match="values"):
        check_query('max(renderfarm_jobs_finished_total{outcome="exploded"})', "example")
    with pytest.raises(AssertionError, match="not labels"):
        check_query("max by (worker) (renderfarm_jobs_pending)", "example")
    with pytest.raises(AssertionError, match="max"):
        check_farm_wide_max(parse_promql("sum(renderfarm_jobs_pending)"), "example")


def test_the_contract_is_consistent():
    for name, metric in contract.METRICS.items():
        assert name.startswith("renderfarm_"), name
        assert name.endswith("_total") == (metric.kind == "counter"), name
        if metric.kind == "histogram":
            assert name.endswith("_seconds"), name
    assert not contract.DASHBOARD.keys() & contract.SCHEDULER.keys()


# --- the Grafana dashboard ------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_dashboard_has_a_prometheus_datasource_variable():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    classes = variables["worker_class"]
    assert set(classes["query"].split(",")) == set(contract.PENDING_CLASSES)
    for panel in all_panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def test_dashboard_queries_name_only_contract_metrics_and_take_max_across_replicas():
    used: set[str] = set()
    for where, expr in dashboard_queries():
        q = check_query(expr, where)
        check_farm_wide_max(q, where)
        used |= {contract.series_names()[s][0] for s in q.series}
    # A panel for every figure the farm exports.
    assert used == set(contract.METRICS), f"no panel for {sorted(set(contract.METRICS) - used)}"


def test_dashboard_has_the_expected_panels():
    titles = [p["title"] for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "two panels with one title"
    ids = [p["id"] for p in all_panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids)), "two panels with one id"
    queries = " ".join(expr for _, expr in dashboard_queries())
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.95," in queries
    assert 'outcome="failed"' in queries  # the failure ratio
    assert 'result="hit"' in queries  # the affinity hit ratio


# --- the alert rules ------------------------------------------------------------------------


@cache
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_every_alert_has_for_severity_summary_and_description():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"Renderfarm[A-Z]\w+", name), name
        assert duration_s(rule["for"]) > 0, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_alert_expressions_name_only_contract_metrics_and_take_max_across_replicas():
    for rule in rules():
        q = check_query(rule["expr"], f"alert {rule['alert']}")
        check_farm_wide_max(q, f"alert {rule['alert']}")


def test_the_expected_alerts_exist():
    by_name = {rule["alert"]: rule for rule in rules()}
    expected = {
        "RenderfarmBacklogGrowing": ("renderfarm_jobs_pending", "deriv("),
        "RenderfarmNoWorkerForPendingJobs": ("renderfarm_workers", "unless"),
        "RenderfarmJobFailureRateHigh": ('outcome="failed"', "> 0.05"),
        "RenderfarmWorkerStalled": ('state="stalled"', ""),
        "RenderfarmOldestPendingJobOld": ("renderfarm_oldest_pending_job_age_seconds", ""),
        "RenderfarmRedisMemoryHigh": ("renderfarm_redis_maxmemory_bytes > 0", "> 0.9"),
        "RenderfarmNoSchedulerLeader": ("renderfarm_scheduler_leader_present", ""),
    }
    for name, fragments in expected.items():
        assert name in by_name, f"no alert {name}"
        for fragment in fragments:
            assert fragment in by_name[name]["expr"], f"{name}: {fragment!r} not in its expr"
    assert duration_s(by_name["RenderfarmBacklogGrowing"]["for"]) >= 15 * 60
    assert "[10m]" in by_name["RenderfarmJobFailureRateHigh"]["expr"]
    assert "[15m]" in by_name["RenderfarmBacklogGrowing"]["expr"]


# --- the scrape config ----------------------------------------------------------------------


def k8s_services() -> dict[str, dict[str, Any]]:
    found = {}
    for path in K8S_DIR.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Service":
                found[doc["metadata"]["name"]] = doc
    return found


def test_scrape_config_finds_the_farms_services_and_reads_the_token_from_a_file():
    config = yaml.safe_load(SCRAPE.read_text())
    assert [(PROM_DIR / f).is_file() for f in config["rule_files"]] == [True]
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"renderfarm-dashboard", "renderfarm-scheduler"}
    services = k8s_services()
    namespace = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["role"] == "endpoints" and sd["namespaces"]["names"] == [namespace]
        (keep,) = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert keep["source_labels"] == [
            "__meta_kubernetes_service_name",
            "__meta_kubernetes_endpoint_port_name",
        ]
        service, port = keep["regex"].split(";")
        assert service in services, f"{job['job_name']}: no Service {service}"
        assert port in {p["name"] for p in services[service]["spec"]["ports"]}
    auth = jobs["renderfarm-dashboard"]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"].startswith("/") and "credentials" not in auth
    # The scheduler's metrics port is the one its Service and Deployment expose.
    (port,) = services["renderfarm-scheduler"]["spec"]["ports"]
    assert port["port"] == 9101


# --- promtool, when installed ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    out = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
