#!/usr/bin/env python3
"""Checks the Phalanx charts and the container images, without a cluster or a Docker engine.

    python check.py [--write-readmes] [--kubernetes-version 1.32.0]

1. Every chart under ``applications/`` is linted (``helm lint --strict``) and rendered (Helm's own
   engine, the Helm v4 Go library that the ``helm-python-sdk`` wheel carries) with each
   ``values-<environment>.yaml`` and the switches in ``SCENARIOS``, plus the globals Argo CD
   injects.
2. Every rendered resource validates: Kubernetes kinds against the Kubernetes OpenAPI schemas
   shipped by ``kubernetes-validate`` (strict: unknown fields fail), Strimzi, VaultSecret,
   Prometheus operator, cert-manager and Strimzi access operator kinds against ``crd_schemas.py``.
   A kind with no schema fails.
3. Environment variables, both ways: a variable a chart sets on a service's container that the
   service does not read fails; so does a variable the service requires that a chart leaves unset.
   What a service reads comes from its sources (clap ``env = "..."`` attributes of the structs its
   container's subcommand parses, and the library code that reads the environment). Where the
   binaries are built, their ``serve --help`` must list exactly the variables the scan found.
   Every Secret a workload reads is one the render makes (a VaultSecret, a KafkaAccess, with the
   keys the access operator writes, a KafkaUser), and every file a service's variable names is in
   a mounted volume. The writer's batches must fit in half its memory limit.
4. Each chart's README.md is what helm-docs writes with Phalanx's template (``helm_docs.py``):
   a stale README fails.
5. Alerts and dashboards: their PromQL parses and reads metrics that exist (``monitoring.py``).
6. The Dockerfiles under ``deploy/images``: hadolint, and the properties the deployment relies on
   (multi-stage, slim runtime, uid 1000, libssl3 and ca-certificates, ``--version`` run at build,
   HOME and WORKDIR under /tmp, nothing declared writable elsewhere, the prebuilt-binary path).
7. A self-test: each kind of mistake must be caught.
8. Where the Phalanx snapshot is: the switch-over rendered against the deployed charts, our files
   laid in and Phalanx's own tests run, the README generator proven on all of Phalanx's READMEs,
   Phalanx's JSON schemas, the metrics events' KafkaAccess and docs snippets against Sasquatch's
   app-metrics subchart (``phalanx_snapshot.py``); elsewhere one ``skip`` line.

Prints a line per check and exits 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm_chart

import helm_docs
import monitoring
import phalanx_snapshot
from crd_schemas import SCHEMAS

HERE = Path(__file__).resolve().parent
PHALANX = HERE.parent
APPLICATIONS = PHALANX / "applications"
ROOT = PHALANX.parent.parent
IMAGES = ROOT / "deploy" / "images"

# The globals Argo CD passes to every Phalanx application.
def argo_globals(environment: str) -> dict[str, Any]:
    return {
        "global": {
            "baseUrl": f"https://{environment}.example.org",
            "host": f"{environment}.example.org",
            "vaultSecretsPath": f"secret/rubin/{environment}",
        }
    }


# Which service each chart's containers run, and where that service reads its environment.
# `structs`: (file, struct) pairs clap parses for the container's subcommand (`serve`) and the
# global options; `flags`: (file, trait, type) of the service's `impl KafkaArgNames for <type>` and
# `impl LogArgNames for <type>`, the variables of the service kit's shared broker and logging
# flags (the broker's cluster required, the rest optional or defaulted);
# `libraries`: files whose `env.get("X")`, `var("X")`, `var_os("X")` calls are environment reads;
# `implicit`: variables read by dependencies (tracing's RUST_LOG).
SERVICES: dict[str, dict[str, Any]] = {
    "butler-writer": {
        "structs": [
            ("butler-writer/src/cli.rs", "Cli"),
            ("butler-writer/src/service/cli.rs", "ServeArgs"),
            # Flattened into `serve`: the metrics events' METRICS_*, SCHEMA_MANAGER_*.
            ("app-metrics/src/settings.rs", "MetricsArgs"),
        ],
        "flags": [
            ("butler-writer/src/service/cli.rs", "KafkaArgNames", "WriterKafka"),
            ("butler-writer/src/cli.rs", "LogArgNames", "WriterLog"),
        ],
        "libraries": ["resources/src/config.rs", "butler-repository/src/db_auth.rs"],
        "prefixes": ["LSST_RESOURCES_S3_PROFILE_"],
        "implicit": ["RUST_LOG"],
    },
    "publication-consumer": {
        "structs": [
            ("publication-consumer/src/cli.rs", "Cli"),
            ("publication-consumer/src/cli.rs", "ServeArgs"),
            # Flattened into `serve`: the release policy's file and option.
            ("publication-consumer/src/cli.rs", "PolicyArgs"),
            # Flattened into `serve`: the transfer tasks' repositories and chunks.
            ("publication-consumer/src/cli.rs", "TransferArgs"),
            # Flattened into `serve`: the metrics events' METRICS_*, SCHEMA_MANAGER_*.
            ("app-metrics/src/settings.rs", "MetricsArgs"),
        ],
        "flags": [
            ("publication-consumer/src/cli.rs", "KafkaArgNames", "ConsumerKafka"),
            ("publication-consumer/src/cli.rs", "LogArgNames", "ConsumerLog"),
        ],
        "libraries": ["resources/src/config.rs", "butler-repository/src/db_auth.rs"],
        "prefixes": ["LSST_RESOURCES_S3_PROFILE_"],
        "implicit": ["RUST_LOG"],
    },
}

# Container name in a chart -> service.
CONTAINERS = {"butler-writer": "butler-writer", "publication-consumer": "publication-consumer"}

# Containers of images that are not ours, whose variables their own documentation describes.
THIRD_PARTY = {"kafdrop": "Kafdrop (obsidiandynamics/kafdrop)"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}

# The keys of the Secret the Strimzi access operator writes for a KafkaAccess (named after it), as
# Phalanx's applications read them for a TLS KafkaUser: the listener's address and protocol, the
# cluster CA, the user's certificate and key.
KAFKA_ACCESS_KEYS = {"bootstrapServers", "securityProtocol", "ssl.truststore.crt", "ssl.keystore.crt", "ssl.keystore.key"}

# A service variable naming a file: ends so, or is one of these.
FILE_VARIABLE = re.compile(r"(_PATH|_FILE)$|^LSST_DB_AUTH$")


class Report:
    def __init__(self) -> None:
        self.failures = 0
        self.passes = 0

    def ok(self, what: str) -> None:
        self.passes += 1
        print(f"ok    {what}")

    def fail(self, what: str, detail: str) -> None:
        self.failures += 1
        print(f"FAIL  {what}\n      " + detail.replace("\n", "\n      "))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def charts() -> list[Path]:
    return sorted(p for p in APPLICATIONS.iterdir() if (p / "Chart.yaml").is_file())


def environments(chart_dir: Path) -> list[str]:
    return sorted(p.stem[len("values-") :] for p in chart_dir.glob("values-*.yaml"))


# Renders beyond the environment files: settings an operator will use that change the templates'
# paths (several writers: a transactional id per pod; metrics events to Sasquatch).
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "butler-writer-service": [
        {"replicaCount": 3},
        {"replay": {"since": "2026-11-28T21:00:00Z"}},
        {"monitoring": {"selector": 'namespace="butler-writer-service"'}},
        # Metrics events to Sasquatch: the KafkaAccess, its secret in the StatefulSet, none in
        # the replay Job.
        {"appMetrics": {"enabled": True}, "replay": {"since": "2026-11-28T21:00:00Z"}},
    ],
    "prompt-publication-consumer": [
        {"appMetrics": {"enabled": True}},
        # An operator's release policy: a ConfigMap mounted where PUBLICATION_POLICY_FILE points.
        {
            "publication": {
                "policy": "profiles:\n- {name: p, origin: prompt_processing, embargo_hours: 80, "
                "publish_to_public: true, retention_days: null, dataset_types: [a]}\n",
                "releaseExposureOnly": True,
            }
        },
    ],
    # Every switch the deployed cluster leaves off: metrics, their scraping and alerts, the
    # Kafka exporter, Cruise Control.
    "prompt-kafka": [
        {
            "strimzi-kafka": {
                "kafka": {"metricsConfig": {"enabled": True}},
                "kafkaExporter": {"enabled": True},
                "cruiseControl": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "cluster": {"monitorLabel": {"prometheus.io/scrape": "true"}},
            }
        }
    ],
}


def render(
    chart_dir: Path, environment: str | None, extra: dict[str, Any] | None = None
) -> tuple[list[dict], dict]:
    values: dict[str, Any] = argo_globals(environment or "default")
    if environment:
        env_values = yaml.safe_load((chart_dir / f"values-{environment}.yaml").read_text()) or {}
        values = deep_merge(values, env_values)
    if extra:
        values = deep_merge(values, extra)
    loaded = helm_chart.Chart.load(str(chart_dir))
    manifests = loaded.render(values=values, name=chart_dir.name, namespace=chart_dir.name)
    documents = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document["__template__"] = template
                documents.append(document)
    return documents, values


def validate(document: dict, kubernetes_version: str) -> str | None:
    resource = {k: v for k, v in document.items() if k != "__template__"}
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key in SCHEMAS:
        errors = sorted(
            jsonschema.Draft202012Validator(SCHEMAS[key]).iter_errors(resource),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            return "\n".join(
                f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
            )
        return None
    try:
        kubernetes_validate.validate(resource, kubernetes_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as error:
        return f"no schema for {key[0]} {key[1]}: {error}"
    except kubernetes_validate.ValidationError as error:
        return f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}"
    return None


# --- what the services read -------------------------------------------------------------------

ARG_RE = re.compile(r"#\[arg\((?P<body>.*?)\)\]\s*pub\s+\w+\s*:\s*(?P<type>[^,\n]+),", re.S)


def struct_body(text: str, name: str) -> str:
    match = re.search(r"pub struct " + re.escape(name) + r"\s*\{", text)
    if not match:
        raise SystemExit(f"check.py: struct {name} not found")
    depth, i = 1, match.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[match.end() : i - 1]


def flag_variables(file: str, trait: str, name: str) -> tuple[set[str], set[str]]:
    """(read, required): the variables `impl <trait> for <name>` names; of the broker's, the
    cluster is required."""
    text = (ROOT / file).read_text()
    match = re.search(r"impl " + re.escape(trait) + " for " + re.escape(name) + r"\s*\{", text)
    if not match:
        raise SystemExit(f"check.py: impl {trait} for {name} not found in {file}")
    depth, i = 1, match.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    body = text[match.end() : i - 1]
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', body))
    required = set(re.findall(r'cluster:\s*"([A-Z0-9_]+)"', body))
    if not read or (trait == "KafkaArgNames" and not required):
        raise SystemExit(f"check.py: no variables found in impl {trait} for {name}")
    return read, required


def service_environment(service: str) -> tuple[set[str], set[str], list[str]]:
    """(read, required, prefixes): every variable the service reads, those it cannot start
    without, and prefixes of variable families it reads."""
    spec = SERVICES[service]
    read: set[str] = set(spec["implicit"])
    required: set[str] = set()
    for file, struct in spec["structs"]:
        body = struct_body((ROOT / file).read_text(), struct)
        for match in ARG_RE.finditer(body):
            attrs, rust_type = match["body"], match["type"].strip()
            env = re.search(r'env\s*=\s*"([A-Z0-9_]+)"', attrs)
            if not env:
                continue
            read.add(env[1])
            optional = rust_type.startswith(("Option<", "Vec<", "bool"))
            defaulted = "default_value" in attrs
            if not optional and not defaulted:
                required.add(env[1])
    for flags in spec.get("flags", []):
        flag_read, flag_required = flag_variables(*flags)
        read |= flag_read
        required |= flag_required
    for file in spec["libraries"]:
        text = (ROOT / file).read_text()
        # Library reads outside tests only.
        text = text.split("#[cfg(test)]")[0]
        read.update(re.findall(r'(?:env\.get|var|var_os)\(\s*"([A-Z][A-Z0-9_]+)"', text))
    return read, required, list(spec["prefixes"])


def container_env(document: dict) -> dict[str, list[dict]]:
    spec = document.get("spec", {})
    if document.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return {c["name"]: c.get("env", []) for c in pod.get("containers", [])}


def check_environment(report: Report, label: str, documents: list[dict]) -> None:
    for document in documents:
        if document.get("kind") not in WORKLOAD_KINDS:
            continue
        for container, env in container_env(document).items():
            service = CONTAINERS.get(container)
            what = f"{label}: env of {document['kind']}/{document['metadata']['name']} container {container}"
            if container in THIRD_PARTY:
                continue
            if service is None:
                report.fail(what, f"no service is known to run in container {container!r}")
                continue
            read, required, prefixes = service_environment(service)
            names = [e["name"] for e in env]
            # A variable used only to build another one's value (`$(POD_NAME)`) is Kubernetes'
            # business, not the service's.
            referenced = {
                n for e in env for n in re.findall(r"\$\(([A-Za-z0-9_]+)\)", str(e.get("value", "")))
            }
            problems = []
            duplicates = {n for n in names if names.count(n) > 1}
            if duplicates:
                problems.append(f"set twice: {sorted(duplicates)}")
            unread = sorted(
                n
                for n in names
                if n not in read and n not in referenced and not n.startswith(tuple(prefixes))
            )
            if unread:
                problems.append(f"set but never read by {service}: {unread}")
            missing = sorted(required - set(names))
            if missing:
                problems.append(f"required by {service} but not set: {missing}")
            empty = sorted(
                e["name"] for e in env if "value" in e and e["name"] in required and not e["value"]
            )
            if empty:
                problems.append(f"required by {service} but empty: {empty}")
            if problems:
                report.fail(what, "\n".join(problems))
            else:
                report.ok(f"{what}: {len(names)} variables, all read, {len(required)} required all set")


# --- READMEs, as helm-docs writes them -------------------------------------------------------


def check_readmes(report: Report, write: bool) -> None:
    """Each chart's README.md is what helm-docs writes with Phalanx's template and options
    (`helm_docs.py`; the Phalanx cross-check proves the generator on Phalanx's own READMEs)."""
    targets = []
    for chart_dir in charts():
        targets.append(chart_dir)
        subcharts = chart_dir / "charts"
        if subcharts.is_dir():
            targets += sorted(p for p in subcharts.iterdir() if (p / "Chart.yaml").is_file())
    for chart_dir in targets:
        wanted = helm_docs.readme(chart_dir, APPLICATIONS)
        path = chart_dir / "README.md"
        label = f"README of {chart_dir.relative_to(PHALANX)}"
        if write:
            path.write_text(wanted)
            report.ok(f"{label}: written")
        elif not path.is_file() or path.read_text() != wanted:
            report.fail(label, "stale or missing (helm-docs would rewrite it): run deploy/phalanx/check --write-readmes")
        else:
            report.ok(f"{label}: as helm-docs writes it")


def yaml_inline(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- alerts and dashboards ---------------------------------------------------------------------


def check_monitoring(report: Report, rendered: dict[str, list[dict]]) -> None:
    """Every rendered PrometheusRule and every dashboard: PromQL that parses, on metrics that
    exist (the services' from their sources, Kafka's from the chart's JMX rules)."""
    served = monitoring.service_metrics(ROOT)
    known = set(monitoring.EXTERNAL).union(*served.values())
    for documents in rendered.values():
        known |= monitoring.jmx_metric_names(documents)
    seen_rules = set()
    for label, documents in rendered.items():
        for document in documents:
            if document.get("kind") != "PrometheusRule":
                continue
            key = (label.split(" ")[0], document["metadata"]["name"])
            what = f"{label}: PrometheusRule/{document['metadata']['name']}"
            expressions = monitoring.rule_expressions(document)
            problems = monitoring.check_expressions(expressions, known)
            if problems:
                report.fail(what, "\n".join(problems))
            elif key not in seen_rules:
                seen_rules.add(key)
                report.ok(f"{what}: {len(expressions)} rules parse, every metric they read exists")
    dashboards = sorted(APPLICATIONS.glob("*/dashboards/*.json"))
    for dashboard in dashboards:
        what = f"dashboard {dashboard.relative_to(PHALANX)}"
        try:
            expressions = monitoring.dashboard_expressions(dashboard.read_text())
        except ValueError as error:
            report.fail(what, f"not a Grafana dashboard: {error}")
            continue
        problems = monitoring.check_expressions(expressions, known)
        if problems:
            report.fail(what, "\n".join(problems))
        else:
            report.ok(f"{what}: {len(expressions)} queries parse, every metric they read exists")
    if not dashboards or not seen_rules:
        report.fail("monitoring", "no dashboard or no PrometheusRule rendered")


def memory_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    if not match or (match[2] and match[2] not in units):
        raise ValueError(f"cannot read memory quantity {quantity!r}")
    return float(match[1]) * units.get(match[2], 1)


def pod_spec(document: dict) -> dict:
    spec = document.get("spec", {})
    if document.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def check_secrets_and_files(report: Report, label: str, documents: list[dict]) -> None:
    """Every Secret a workload reads (`secretKeyRef`, secret volumes) is made by the render (a
    VaultSecret, a KafkaAccess's Secret, a KafkaUser's) and, for a KafkaAccess, read by keys the
    access operator writes; every file a service's variable names lies in one of its container's
    mounts, and in a secret volume's `items` where the volume lists them."""
    made: dict[str, set[str] | None] = {}
    for document in documents:
        name = document.get("metadata", {}).get("name")
        if document.get("kind") in ("VaultSecret", "Secret", "KafkaUser"):
            made[name] = None
        elif document.get("kind") == "KafkaAccess":
            made[name] = KAFKA_ACCESS_KEYS
    for document in documents:
        if document.get("kind") not in WORKLOAD_KINDS:
            continue
        pod = pod_spec(document)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        reads: list[tuple[str, str | None]] = []
        for volume in volumes.values():
            if "secret" in volume:
                keys = [item["key"] for item in volume["secret"].get("items", [])] or [None]
                reads += [(volume["secret"]["secretName"], key) for key in keys]
        problems = []
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    reads.append((ref["name"], ref["key"]))
            if container["name"] not in CONTAINERS:
                continue
            mounts = container.get("volumeMounts", [])
            for variable in container.get("env", []):
                path = str(variable.get("value", ""))
                if not FILE_VARIABLE.search(variable["name"]) or not path.startswith("/"):
                    continue
                mount = max(
                    (m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")),
                    key=lambda m: len(m["mountPath"]),
                    default=None,
                )
                if mount is None:
                    problems.append(f"{container['name']}: {variable['name']}={path} is in no mounted volume")
                    continue
                secret = volumes.get(mount["name"], {}).get("secret", {})
                listed = {item["path"] for item in secret.get("items", [])}
                relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
                if listed and relative not in listed:
                    problems.append(
                        f"{container['name']}: {variable['name']}={path}: volume {mount['name']} holds {sorted(listed)}"
                    )
        for name, key in reads:
            if name not in made:
                problems.append(f"Secret {name} is made by nothing the chart renders")
            elif key is not None and made[name] is not None and key not in made[name]:
                problems.append(f"Secret {name} (a KafkaAccess's) has no key {key}: {sorted(made[name])}")
        what = f"{label}: secrets and files of {document['kind']}/{document['metadata']['name']}"
        if problems:
            report.fail(what, "\n".join(sorted(set(problems))))
        else:
            report.ok(f"{what}: {len(set(reads))} secret reads, each made by the render, every file in a mount")


def check_memory_budget(report: Report, label: str, documents: list[dict]) -> None:
    """The writer holds up to `db concurrency` + 3 batches of BUTLER_WRITER_BATCH_MAX_BYTES, each
    parsed to about three times its bytes (butler-writer's settings): that must stay within half
    of the container's memory limit, the rest being the process's own."""
    for document in documents:
        if document.get("kind") not in WORKLOAD_KINDS:
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if container["name"] != "butler-writer" or "BUTLER_WRITER_BATCH_MAX_BYTES" not in env:
                continue
            batches = int(env.get("BUTLER_WRITER_DB_CONCURRENCY") or 2) + 3
            worst = batches * 3 * int(env["BUTLER_WRITER_BATCH_MAX_BYTES"])
            limit = memory_bytes(container["resources"]["limits"]["memory"])
            what = f"{label}: memory budget of {document['kind']}/{document['metadata']['name']}"
            if worst > limit / 2:
                report.fail(what, f"{batches} batches x 3 x batch.maxBytes = {worst / 2**20:.0f} MiB, over half the {limit / 2**20:.0f} MiB limit")
            else:
                report.ok(f"{what}: batches at most {worst / 2**20:.0f} MiB of the {limit / 2**20:.0f} MiB limit")


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, rest.strip()))
    return stages


def check_dockerfiles(report: Report, hadolint: str) -> None:
    files = sorted(IMAGES.glob("*.Dockerfile"))
    if not files:
        report.fail("Dockerfiles", f"none under {IMAGES}")
        return
    for file in files:
        service = file.name[: -len(".Dockerfile")]
        label = f"Dockerfile {file.relative_to(ROOT)}"
        # DL3008 (pin apt package versions): the Debian release in the base image tag pins
        # them; exact versions would break the build at each Debian point release.
        lint = subprocess.run(
            [hadolint, "--ignore", "DL3008", "--no-color", str(file)],
            capture_output=True,
            text=True,
        )
        if lint.returncode != 0:
            report.fail(f"{label}: hadolint", lint.stdout + lint.stderr)
        else:
            report.ok(f"{label}: hadolint clean")
        stages = dockerfile_stages(file.read_text())
        problems = []
        if len(stages) < 2:
            problems.append("not multi-stage")
        final = stages[-1] if stages else []
        base = final[0][1] if final else ""
        if "slim" not in base:
            problems.append(f"runtime base {base!r} is not a slim image")
        users = [rest for ins, rest in final if ins == "USER"]
        if not users or users[-1].split(":")[0] != "1000":
            problems.append(f"final USER is {users[-1:] or 'unset'}, not 1000")
        runs = " ".join(rest for ins, rest in final if ins == "RUN")
        for package in ("libssl3", "ca-certificates"):
            if package not in runs:
                problems.append(f"runtime stage does not install {package}")
        if not any(
            ins == "RUN" and f"/usr/local/bin/{service}" in rest and "--version" in rest for ins, rest in final
        ):
            problems.append(f"runtime stage never runs {service} --version")
        env = " ".join(rest for ins, rest in final if ins == "ENV")
        if not re.search(r"HOME=/tmp(\s|/|$)", env):
            problems.append("HOME is not under /tmp (the root filesystem is read-only)")
        workdirs = [rest for ins, rest in final if ins == "WORKDIR"]
        if not workdirs or not workdirs[-1].startswith("/tmp"):
            problems.append("WORKDIR is not under /tmp")
        volumes = [rest for ins, rest in final if ins == "VOLUME"]
        if any("/tmp" not in v for v in volumes):
            problems.append(f"VOLUME outside /tmp: {volumes}")
        entry = [rest for ins, rest in final if ins == "ENTRYPOINT"]
        if not entry or f"/usr/local/bin/{service}" not in entry[-1]:
            problems.append(f"ENTRYPOINT is not /usr/local/bin/{service}")
        build = " ".join(rest for stage in stages[:-1] for ins, rest in stage if ins == "RUN")
        if "--locked" not in build or f"-p {service}" not in build:
            problems.append("the build stage does not run cargo build --locked for the service")
        if "vendored-sources" not in build or "--offline" not in build:
            problems.append("no offline build from vendored sources")
        # deploy/images/build --prebuilt: the runtime stage takes the binary from the stage
        # BINARY_FROM names, `build` or `prebuilt` (the binary alone as the context).
        names = {stage[0][1].split()[-1]: stage for stage in stages if " AS " in stage[0][1].upper()}
        prebuilt = names.get("prebuilt", [])
        if not any(ins == "COPY" and rest.split()[0] == service for ins, rest in prebuilt):
            problems.append(f"no `prebuilt` stage copying {service} from the context")
        if "binary" not in names or not names["binary"][0][1].startswith("${BINARY_FROM}"):
            problems.append("no `binary` stage FROM ${BINARY_FROM}")
        if not any(ins == "COPY" and rest.startswith("--from=binary ") for ins, rest in final):
            problems.append("the runtime stage does not copy the binary from the `binary` stage")
        if problems:
            report.fail(f"{label}: properties", "\n".join(problems))
        else:
            report.ok(
                f"{label}: multi-stage, slim runtime, uid 1000, libssl3 and ca-certificates, --version at build, "
                "HOME and WORKDIR in /tmp, offline build, prebuilt binary path"
            )
    for chart_dir in charts():
        for template in (chart_dir / "templates").glob("*.yaml"):
            text = template.read_text()
            if "image:" in text and "readOnlyRootFilesystem" not in (chart_dir / "values.yaml").read_text():
                report.fail(f"{chart_dir.name}: read-only root", "securityContext.readOnlyRootFilesystem not set")


def cross_check_binaries(report: Report) -> None:
    """Where the services are built (target/debug or target/release), the variables their
    `serve --help` lists must be exactly those the source scan found in the clap structs: the
    scan is what the environment check relies on."""
    for service in SERVICES:
        built = [p for p in (ROOT / "target" / d / service for d in ("debug", "release")) if p.is_file()]
        binary = max(built, key=lambda p: p.stat().st_mtime) if built else None
        what = f"{service} serve --help against the source scan"
        if binary is None:
            print(f"skip  {what}: not built")
            continue
        shown = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True)
        from_help = set(re.findall(r"\[env: ([A-Z0-9_]+)", shown.stdout))
        from_source = set()
        for file, struct in SERVICES[service]["structs"]:
            body = struct_body((ROOT / file).read_text(), struct)
            from_source.update(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', body))
        for flags in SERVICES[service].get("flags", []):
            from_source |= flag_variables(*flags)[0]
        if shown.returncode != 0 or from_help != from_source:
            report.fail(
                what,
                f"{binary}: only in --help {sorted(from_help - from_source)}, "
                f"only in the sources {sorted(from_source - from_help)}",
            )
        else:
            report.ok(f"{what}: the same {len(from_help)} variables")


def self_test(report: Report, kubernetes_version: str) -> None:
    """The checks can fail: each mutation of a rendered chart must be caught."""
    chart_dir = APPLICATIONS / "butler-writer-service"
    documents, _ = render(chart_dir, environments(chart_dir)[0])
    workload = next(d for d in documents if d["kind"] == "StatefulSet")
    container = workload["spec"]["template"]["spec"]["containers"][0]

    def caught(what: str, failed: bool) -> None:
        if failed:
            report.ok(f"self-test: {what} is caught")
        else:
            report.fail("self-test", f"{what} passed the check")

    bad = copy.deepcopy(workload)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    caught("an unknown Kubernetes field", validate(bad, kubernetes_version) is not None)
    bad = copy.deepcopy(workload)
    bad["spec"]["replicas"] = "one"
    caught("a mistyped Kubernetes field", validate(bad, kubernetes_version) is not None)
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "t", "labels": {"strimzi.io/cluster": "c"}},
        "spec": {"partition": 1, "replicas": 3},
    }
    caught("a misspelt KafkaTopic field", validate(topic, kubernetes_version) is not None)
    caught("an unknown custom resource", validate({**topic, "kind": "KafkaTopik"}, kubernetes_version) is not None)

    def env_failures(env: list[dict]) -> int:
        probe = copy.deepcopy(workload)
        probe["spec"]["template"]["spec"]["containers"][0]["env"] = env
        sub = Report()
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            check_environment(sub, "self-test", [probe])
        return sub.failures

    env = container["env"]
    caught("a variable the writer does not read", env_failures(env + [{"name": "KAFKA_GROUP", "value": "x"}]) > 0)
    caught(
        "a required variable left unset",
        env_failures([e for e in env if e["name"] != "KAFKA_OUTPUT_TOPIC"]) > 0,
    )
    if env_failures(env) == 0:
        report.ok("self-test: the chart's own environment passes")
    else:
        report.fail("self-test", "the chart's own environment fails")

    def secrets_failures(documents: list[dict]) -> int:
        sub = Report()
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            check_secrets_and_files(sub, "self-test", documents)
        return sub.failures

    with_metrics, _ = render(chart_dir, environments(chart_dir)[0], {"appMetrics": {"enabled": True}})
    if secrets_failures(with_metrics) == 0:
        report.ok("self-test: the chart's secrets and files with metrics events on pass")
    else:
        report.fail("self-test", "the chart's secrets and files with metrics events on fail")
    for what, mutate in (
        ("a KafkaAccess secret key the access operator does not write", lambda pod, c: c["env"].__setitem__(
            [e["name"] for e in c["env"]].index("METRICS_KAFKA_BOOTSTRAP_SERVERS"),
            {"name": "METRICS_KAFKA_BOOTSTRAP_SERVERS",
             "valueFrom": {"secretKeyRef": {"name": "butler-writer-service-app-metrics", "key": "bootstrap.servers"}}})),
        ("a file outside the secret volume's items", lambda pod, c: c["env"].append(
            {"name": "METRICS_KAFKA_CLIENT_KEY_PATH", "value": "/app/sasquatch-kafka/tls.key"})),
        ("a file in no mounted volume", lambda pod, c: c["env"].append({"name": "LSST_DB_AUTH", "value": "/etc/db-auth.yaml"})),
        ("a secret nothing renders", lambda pod, c: pod["volumes"][0]["secret"].__setitem__("secretName", "elsewhere")),
    ):
        probe = copy.deepcopy(with_metrics)
        stateful = next(d for d in probe if d["kind"] == "StatefulSet")
        pod = stateful["spec"]["template"]["spec"]
        mutate(pod, pod["containers"][0])
        caught(what, secrets_failures(probe) > 0)

    known = set().union(*monitoring.service_metrics(ROOT).values())
    caught(
        "an alert on a metric nobody serves",
        bool(monitoring.check_expressions([("t", "butler_writer_batch_total > 0")], known)),
    )
    caught("an alert that does not parse", bool(monitoring.check_expressions([("t", "sum(rate(x[5m])")], known)))
    moved = copy.deepcopy(workload)
    moved["spec"]["podManagementPolicy"] = "Parallel"
    _, unexpected, _ = phalanx_snapshot.compare("butler-writer-service", [workload], [moved])
    caught("a changed immutable StatefulSet field", any("immutable" in u for u in unexpected))
    _, unexpected, _ = phalanx_snapshot.compare("prompt-kafka", [], [topic])
    caught("an undeclared new resource in a switch-over", bool(unexpected))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-readmes", action="store_true", help="regenerate each chart's README.md")
    parser.add_argument("--kubernetes-version", default="1.32.0", help="Kubernetes schemas to validate against")
    parser.add_argument("--hadolint", default="hadolint", help="the hadolint binary")
    args = parser.parse_args()
    report = Report()
    rendered: dict[str, list[dict]] = {}

    for chart_dir in charts():
        name = chart_dir.name
        envs = environments(chart_dir)
        if len(envs) < 2:
            report.fail(name, f"expected a dev and a prod environment file, found {envs}")
        if not (chart_dir / "secrets.yaml").is_file():
            report.fail(name, "no secrets.yaml")
        runs = [(environment, None) for environment in envs] + [
            (envs[-1], extra) for extra in SCENARIOS.get(name, []) if envs
        ]
        for environment, extra in runs:
            label = f"{name} [{environment}{' + ' + yaml_inline(extra) if extra else ''}]"
            values = deep_merge(
                argo_globals(environment),
                yaml.safe_load((chart_dir / f"values-{environment}.yaml").read_text()) or {},
            )
            values = deep_merge(values, extra or {})
            try:
                result = helm_chart.lint(str(chart_dir), values, strict=True, namespace=name, with_subcharts=True)
            except Exception as error:  # noqa: BLE001 - the library's error is the report
                report.fail(f"{label}: helm lint", str(error))
            else:
                messages = [
                    m
                    for m in (result.get("messages") or [])
                    if str(m.get("severity", "")).lower() not in ("info", "0", "1")
                ]
                if messages or result.get("errors"):
                    report.fail(f"{label}: helm lint", yaml.safe_dump(result))
                else:
                    report.ok(f"{label}: helm lint --strict")
            try:
                documents, _ = render(chart_dir, environment, extra)
            except Exception as error:  # noqa: BLE001
                report.fail(f"{label}: render", str(error))
                continue
            kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
            report.ok(f"{label}: rendered {len(documents)} resources: {', '.join(kinds)}")
            invalid = []
            for document in documents:
                problem = validate(document, args.kubernetes_version)
                if problem:
                    invalid.append(
                        f"{document['__template__']}: {document.get('kind')}/{document['metadata'].get('name')}: {problem}"
                    )
            if invalid:
                report.fail(f"{label}: schemas", "\n".join(invalid))
            else:
                report.ok(
                    f"{label}: every resource valid (Kubernetes {args.kubernetes_version} strict, Strimzi/VaultSecret)"
                )
            check_environment(report, label, documents)
            check_secrets_and_files(report, label, documents)
            check_memory_budget(report, label, documents)
            rendered[label] = documents

    self_test(report, args.kubernetes_version)
    cross_check_binaries(report)
    check_readmes(report, args.write_readmes)
    check_monitoring(report, rendered)
    snapshot = phalanx_snapshot.find_snapshot()
    if snapshot is None or not snapshot.exists():
        print("skip  Phalanx cross-check: no snapshot at ../shared/phalanx/phalanx-*.tgz (set PHALANX_SNAPSHOT)")
    elif not args.write_readmes:
        phalanx_snapshot.cross_check(
            report, snapshot, render, environments, ROOT / "target" / "phalanx-check" / "switch-over"
        )
    check_dockerfiles(report, args.hadolint)
    print(f"{report.passes} passed, {report.failures} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
