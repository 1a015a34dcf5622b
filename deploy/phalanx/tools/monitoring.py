"""Checks of the alerts and dashboards the charts render: every PromQL expression parses (the
`promql-parser` wheel, Rust's promql-parser, which follows Prometheus' grammar), and every metric
it reads exists.

Where the names come from, so that they cannot drift from what is served:

- the services' metrics from their sources: the metric structs' registrations
  (`registry.register("name", ..., metrics.<field>.clone())` under `Registry::with_prefix`) and the
  field's type (a `Counter` is served as `<name>_total`, a `Histogram` as `_bucket`, `_sum` and
  `_count`), and the shared ones of `service-kit` where a service registers them; the scan fails
  when it finds a registration it cannot read, and `images/check-runtime` compares its result with
  the `/metrics` of the running services;
- Kafka's from the JMX exporter rules the prompt-kafka chart renders (each rule names its metric);
- the few from outside (the kubelet's volume statistics, the Kafka exporter's lag) from the
  `EXTERNAL` list below, with where each is documented.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

# Series Prometheus gets from elsewhere than our services and the chart's JMX rules.
EXTERNAL = {
    # The kubelet's volume statistics (Kubernetes' kubelet metrics, scraped by every cluster
    # Prometheus): the brokers' disks.
    "kubelet_volume_stats_available_bytes": "kubelet",
    "kubelet_volume_stats_capacity_bytes": "kubelet",
    # Strimzi's Kafka exporter (kafkaExporter.enabled): lag per consumer group and partition.
    "kafka_consumergroup_lag": "Strimzi Kafka exporter",
}

# The services: their metrics source, its struct, and the prefix of their registry.
SERVICES = {
    "butler-writer": ("butler-writer/src/service/metrics.rs", "Metrics"),
    "publication-consumer": ("publication-consumer/src/metrics.rs", "Metrics"),
}
COMMON = ("service-kit/src/metrics.rs", "CommonMetrics")


def _field_types(text: str, struct: str) -> dict[str, str]:
    match = re.search(r"pub struct " + re.escape(struct) + r"\s*\{(.*?)\n\}", text, re.S)
    if not match:
        raise SystemExit(f"monitoring.py: struct {struct} not found")
    return dict(re.findall(r"^\s*pub (\w+):\s*(.+),\s*$", match[1], re.M))


def _served(name: str, rust_type: str) -> set[str]:
    if "Histogram" in rust_type:
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if "Counter" in rust_type:
        return {f"{name}_total"}
    if "Gauge" in rust_type:
        return {name}
    raise SystemExit(f"monitoring.py: metric {name} has a type the scan does not know: {rust_type}")


def _registrations(text: str, types: dict[str, str], owner: str) -> dict[str, str]:
    """name -> Rust type of each `register("name", help, <owner>.<field>.clone())`."""
    calls = re.findall(r"\.register\(\s*\"(\w+)\",", text)
    found = dict(
        (name, types[field])
        for name, field in re.findall(
            r"\.register\(\s*\"(\w+)\",.*?" + owner + r"\.(\w+)\.clone\(\)", text, re.S
        )
        if field in types
    )
    if len(found) != len(calls):
        raise SystemExit(
            f"monitoring.py: read {len(found)} of {len(calls)} metric registrations: {sorted(set(calls) - set(found))}"
        )
    return found


def service_metrics(root: Path) -> dict[str, set[str]]:
    """Series names each service serves, from its sources."""
    return {service: set(series) for service, series in service_series(root).items()}


def service_series(root: Path) -> dict[str, dict[str, str]]:
    """Series each service serves, from its sources, with the Rust type of their metric (a
    `Family<...>` has no series, and no `# TYPE` line, until its first label set is used)."""
    common_text = (root / COMMON[0]).read_text()
    common = _registrations(common_text, _field_types(common_text, COMMON[1]), "self")
    out: dict[str, dict[str, str]] = {}
    for service, (file, struct) in SERVICES.items():
        text = (root / file).read_text()
        prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', text)
        if not prefix:
            raise SystemExit(f"monitoring.py: no Registry::with_prefix in {file}")
        own = _registrations(text, _field_types(text, struct), "metrics")
        if re.search(r"\.common\s*\.register\(", text):
            own = {**own, **common}
        out[service] = {series: t for n, t in own.items() for series in _served(f"{prefix[1]}_{n}", t)}
    return out


def served_from_exposition(text: str) -> set[str]:
    """Series names a `/metrics` page declares (its `# TYPE` lines), as Prometheus stores them."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        names |= {
            "counter": {f"{name}_total"},
            "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
        }.get(kind, {name})
    return names


def jmx_metric_names(documents: list[dict]) -> set[str]:
    """Names the rendered JMX exporter rules (ConfigMap `kafka-metrics`) give their metrics."""
    names: set[str] = set()
    for document in documents:
        if document.get("kind") == "ConfigMap" and document["metadata"]["name"] == "kafka-metrics":
            config = yaml.safe_load(document["data"]["kafka-metrics-config.yml"])
            for rule in config.get("rules", []):
                if "name" in rule:
                    if "$" in rule["name"]:
                        raise SystemExit(f"monitoring.py: JMX rule name {rule['name']} is not literal")
                    names.add(rule["name"])
    return names


def selectors(expression: str) -> list[str]:
    """Metric names read by a PromQL expression; raises ValueError when it does not parse."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if not name:
                for matcher in node.matchers.matchers:
                    if matcher.name == "__name__":
                        name = matcher.value
            if not name:
                raise ValueError(f"a selector without a metric name: {node}")
            names.append(name)

    promql_parser.walk(promql_parser.parse(expression), pre_visit=visit)
    return names


def dashboard_expressions(text: str) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of a Grafana dashboard; Grafana's interval
    variables are replaced with a duration for parsing."""
    dashboard = json.loads(text)
    out = []

    def panels(items: list[dict]) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            for target in panel.get("targets", []):
                expression = re.sub(r"\$__(rate_)?interval|\$__range", "5m", target.get("expr", ""))
                out.append((panel.get("title", "?"), expression))

    panels(dashboard.get("panels", []))
    if not out:
        raise ValueError("no queries")
    return out


def rule_expressions(document: dict) -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule.get("record"), str(rule["expr"]))
        for group in document["spec"]["groups"]
        for rule in group["rules"]
    ]


def check_expressions(expressions: list[tuple[str, str]], known: set[str]) -> list[str]:
    """Problems with the expressions: syntax errors and metrics nobody serves."""
    problems = []
    for what, expression in expressions:
        try:
            names = selectors(expression)
        except ValueError as error:
            problems.append(f"{what}: does not parse: {error}: {expression}")
            continue
        unknown = sorted(set(names) - known)
        if unknown:
            problems.append(f"{what}: reads metrics nobody serves: {unknown}")
    return problems
