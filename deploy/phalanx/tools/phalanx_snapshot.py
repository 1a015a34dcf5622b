"""Our charts inside a real Phalanx: laying them into a checkout, and the checks that need one.

`lay(phalanx)` does what an operator does to deploy this work through Phalanx: it replaces (or
adds) our applications under `applications/`, adds the Argo CD Application templates under
`environments/templates/`, the enable switches (`environments/applications.yaml` says which, where
and in which environments), the docs pages under `docs/applications/` and their toctree entries,
and regenerates `environments/README.md` as helm-docs would. `deploy/phalanx/lay DIR` runs it on
a checkout.

`cross_check(report, snapshot)` unpacks the Phalanx snapshot (`../shared/phalanx/*.tgz`) into a
temporary directory and, there:

1. renders the applications we replace as Phalanx deploys them and as we do, for each environment,
   and compares them resource by resource: the switch-over (and its reverse, the rollback) may
   only add, remove or change what `EXPECTED` lists with its reason, and a StatefulSet's immutable
   fields must be equal, or Argo CD could not update it in place;
2. lays our files in and runs Phalanx's own `tests/config_test.py` (Python >= 3.13, in a virtual
   environment under target/ made from the snapshot's dependencies, pinned by its uv.lock);
3. proves the README generator: every README.md in Phalanx (all applications with their
   dependencies' values, shared charts and environments, ours included) must be what
   `helm_docs.readme` writes, byte for byte;
4. validates our `secrets.yaml` files and the changed environment files against Phalanx's own JSON
   schemas (`docs/extras/schemas/`), as its pre-commit does, and has Phalanx itself
   (`phalanx secrets static-template`) say which secrets it would ask an operator for: prompt-kafka's
   passwords, not the services' copies of them;
5. checks our application metrics events against Sasquatch: each `app-metrics` and
   `globalAppConfig` snippet our docs tell operators to add (deploy/phalanx/README.md, the docs
   pages) is rendered with Sasquatch's app-metrics subchart and must create the KafkaUser our
   KafkaAccess names (TLS, in the cluster it names), the topic our services send to, with the
   ACLs to write it, and Telegraf's input for it with the tags, each a field of the service's
   events; our KafkaAccess must be valid against the CRD Phalanx installs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import helm_docs

HERE = Path(__file__).resolve().parent
PHALANX_DIR = HERE.parent
ROOT = PHALANX_DIR.parent.parent

# What the switch-over may change, with the reason (deploy/README.md says more). Keys:
# `+Kind/name` added, `-Kind/name` removed, `~Kind/name:path` a change under that path.
EXPECTED: dict[str, dict[str, str]] = {
    "butler-writer-service": {
        "~StatefulSet/butler-writer-service:spec.template": "the Rust writer's pod; the template is updated in place",
        "~StatefulSet/butler-writer-service:metadata.labels": "the chart's labels",
        "~StatefulSet/butler-writer-service:spec.serviceName": 'written as the "" the API server keeps for the absent one',
        "~VaultSecret/butler-writer-service-secret:metadata.labels": "the chart's labels",
        "+PrometheusRule/butler-writer-service": "the writer's alerts",
        "+ConfigMap/butler-writer-service-dashboard": "the writer's dashboard",
    },
    "prompt-kafka": {
        "+KafkaTopic/butler-writer-dlq": "the dead-letter topic of the Rust writer",
        "~KafkaUser/butler-writer:spec.authorization.acls": "the dead-letter topic; groups and transactional ids by prefix",
        "~KafkaUser/prompt-publication-consumer:spec.authorization.acls": "read-only on its groups (by prefix)",
    },
}

# Secrets an operator sets by hand (other applications keep copies of them, so never generated),
# and those Phalanx copies from them.
STATIC_SECRETS = [
    ("prompt-kafka", "butler-writer-password"),
    ("prompt-kafka", "prompt-publication-consumer-password"),
    ("prompt-kafka", "kafdrop-password"),
    ("prompt-kafka", "kafdrop-kafka-properties"),
]
COPIED_SECRETS = [
    ("butler-writer-service", "butler-writer-password"),
    ("prompt-publication-consumer", "prompt-publication-consumer-password"),
]

# Fields of a live object that Kubernetes refuses to change.
IMMUTABLE = {
    "StatefulSet": ["spec.selector", "spec.serviceName", "spec.podManagementPolicy", "spec.volumeClaimTemplates"],
    "Deployment": ["spec.selector"],
    "Job": ["spec.selector", "spec.template"],
}


# The services' application metrics events: the Rust files of each chart's events (the structs
# that `impl AppEvent`), and the files whose YAML snippets tell operators what to add to Sasquatch.
EVENT_SOURCES = {
    "butler-writer-service": "butler-writer/src/service/sasquatch.rs",
    "prompt-publication-consumer": "publication-consumer/src/sasquatch.rs",
}
SASQUATCH_APP_METRICS = "applications/sasquatch/charts/app-metrics"
KAFKA_ACCESS_CRD = "applications/strimzi-access-operator/crds/kafkaaccess.yaml"


def snippet_files() -> list[Path]:
    return [PHALANX_DIR / "README.md", *sorted((PHALANX_DIR / "docs").rglob("*.rst"))]


def yaml_snippets(path: Path) -> list[Any]:
    """The YAML code blocks of a Markdown (```yaml) or reStructuredText (code-block:: yaml) file."""
    text = path.read_text()
    blocks: list[str] = []
    if path.suffix == ".md":
        for match in re.finditer(r"^( *)```yaml\n(.*?)^ *```", text, re.S | re.M):
            indent = len(match[1])
            blocks.append("\n".join(line[indent:] for line in match[2].splitlines()))
    else:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            directive = re.match(r"^( *)\.\. code-block:: yaml\s*$", line)
            if not directive:
                continue
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= len(directive[1]):
                    break
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)))
    return [yaml.safe_load(block) for block in blocks]


def event_fields(source: Path) -> dict[str, set[str]]:
    """Event name -> its fields, from the structs of `source` that `impl AppEvent`."""
    text = source.read_text()
    events = {}
    for struct, name in re.findall(r'impl AppEvent for (\w+) \{\s*const NAME: &\'static str = "(\w+)";', text):
        body = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
        events[name] = set(re.findall(r"^\s*pub (\w+):", body[1], re.M)) if body else set()
    return events


def check_app_metrics(report: Any, label: str, phalanx: Path, render: Any, environments: Any) -> None:
    crd = yaml.safe_load((phalanx / KAFKA_ACCESS_CRD).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    ours = {}
    for app in our_applications():
        if app.name not in EVENT_SOURCES:
            continue
        documents, _ = render(app, environments(app)[-1], {"appMetrics": {"enabled": True}})
        access = [d for d in documents if d["kind"] == "KafkaAccess"]
        env = {
            e["name"]: e.get("value")
            for d in documents if d["kind"] in ("StatefulSet", "Deployment")
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        what = f"{label}: {app.name}'s KafkaAccess against Phalanx's CRD"
        resource = {k: v for k, v in access[0].items() if k != "__template__"} if len(access) == 1 else {}
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(resource)]
        if len(access) != 1 or errors:
            report.fail(what, f"{len(access)} KafkaAccess rendered; {errors}")
            continue
        report.ok(f"{what}: valid")
        fields = event_fields(ROOT / EVENT_SOURCES[app.name])
        ours[env["METRICS_APPLICATION"]] = (app.name, resource, f"{env['METRICS_EVENTS_TOPIC_PREFIX']}.{env['METRICS_APPLICATION']}", fields)
    snippets = 0
    for path in snippet_files():
        apps: list[str] = []
        config: dict[str, Any] = {}
        for snippet in yaml_snippets(path):
            if isinstance(snippet, dict):
                apps += (snippet.get("app-metrics") or {}).get("apps", [])
                config.update(snippet.get("globalAppConfig") or {})
        if not apps and not config:
            continue
        snippets += 1
        what = f"{label}: Sasquatch's app-metrics with the snippets of {path.relative_to(PHALANX_DIR)}"
        problems = [f"{name}: not one of our applications ({sorted(ours)})" for name in set(apps) | set(config) if name not in ours]
        documents, _ = render(phalanx / SASQUATCH_APP_METRICS, None, {"apps": apps, "globalAppConfig": config})
        made = {(d["kind"], d["metadata"]["name"]): d for d in documents}
        telegraf = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["telegraf.conf"]
        inputs = {}
        for block in telegraf.split("[[inputs.kafka_consumer]]")[1:]:
            topics = re.search(r"topics = \[(.*?)\]", block, re.S)
            tags = re.search(r"avro_tags = \[(.*?)\]", block, re.S)
            for topic in re.findall(r'"([^"]+)"', topics[1] if topics else ""):
                inputs[topic] = set(re.findall(r'"([^"]+)"', tags[1] if tags else ""))
        for name in apps:
            if name not in ours:
                continue
            app_name, access, topic, fields = ours[name]
            user = made.get(("KafkaUser", access["spec"]["user"]["name"]))
            if user is None:
                problems.append(f"{name}: no KafkaUser {access['spec']['user']['name']} for {app_name}'s KafkaAccess")
            else:
                if user["spec"]["authentication"]["type"] != "tls" or access["spec"]["kafka"]["listener"] != "tls":
                    problems.append(f"{name}: the KafkaUser's authentication and the KafkaAccess's listener are not both tls")
                if user["metadata"]["labels"].get("strimzi.io/cluster") != access["spec"]["kafka"]["name"]:
                    problems.append(f"{name}: the KafkaUser is not in the KafkaAccess's cluster {access['spec']['kafka']['name']}")
                allowed = {
                    op
                    for acl in user["spec"]["authorization"]["acls"]
                    if acl["resource"]["type"] == "topic"
                    and (acl["resource"]["name"] == topic
                         or (acl["resource"].get("patternType") == "prefix" and topic.startswith(acl["resource"]["name"])))
                    for op in acl["operations"]
                }
                if not {"Write", "Describe"} <= allowed:
                    problems.append(f"{name}: the KafkaUser may not write {topic} ({sorted(allowed)})")
            if ("KafkaTopic", topic) not in made:
                problems.append(f"{name}: no KafkaTopic {topic}, where {app_name} sends its events")
            if topic not in inputs:
                problems.append(f"{name}: Telegraf does not read {topic}")
        for name, settings in config.items():
            if name not in ours:
                continue
            app_name, _, topic, fields = ours[name]
            every_field = set().union(*fields.values())
            for tag in settings.get("influxTags", []):
                if tag not in every_field:
                    problems.append(f"{name}: tag {tag!r} is no field of {app_name}'s events ({sorted(fields)})")
                if name in apps and tag not in inputs.get(topic, set()):
                    problems.append(f"{name}: Telegraf does not make {tag!r} a tag of {topic}")
        if problems:
            report.fail(what, "\n".join(problems))
        else:
            tags = "; ".join(f"{k}: {', '.join(v.get('influxTags', []))}" for k, v in config.items()) or "none"
            report.ok(
                f"{what}: apps {apps}: KafkaUsers (tls) and topics as our KafkaAccess and services name them, "
                f"write allowed, Telegraf reads them; tags ({tags}) each an event field"
            )
    if not snippets:
        report.fail(f"{label}: Sasquatch's app-metrics", "no app-metrics snippet found in README.md or docs/")


# --- laying our files into a Phalanx checkout --------------------------------------------------


def our_applications() -> list[Path]:
    return sorted(p for p in (PHALANX_DIR / "applications").iterdir() if (p / "Chart.yaml").is_file())


def _set_in_applications_block(text: str, name: str, value: str) -> str:
    """Sets `applications.<name>` in an environment file, keeping the block's order."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "applications:"), None)
    if start is None:
        return text.rstrip("\n") + f"\n\napplications:\n  {name}: {value}\n"
    end = start + 1
    while end < len(lines) and (lines[end].startswith("  ") or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    entry = f"  {name}: {value}"
    for i in range(start + 1, end):
        key = lines[i].strip().split(":")[0]
        if key == name:
            lines[i] = entry
            return "\n".join(lines)
        if key > name and not lines[i].lstrip().startswith("#"):
            lines.insert(i, entry)
            return "\n".join(lines)
    lines.insert(end, entry)
    return "\n".join(lines)


def lay(phalanx: Path) -> list[str]:
    """Puts our applications, environment templates, switches and docs into a Phalanx checkout."""
    done = []
    for app in our_applications():
        target = phalanx / "applications" / app.name
        existed = target.exists()
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(app, target)
        done.append(f"applications/{app.name} {'replaced' if existed else 'added'}")
    templates = PHALANX_DIR / "environments" / "templates"
    for file in sorted(p for p in templates.rglob("*") if p.is_file()):
        target = phalanx / "environments" / "templates" / file.relative_to(templates)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        done.append(f"environments/templates/{file.relative_to(templates)}")
    switches = yaml.safe_load((PHALANX_DIR / "environments" / "applications.yaml").read_text())
    values_file = phalanx / "environments" / "values.yaml"
    values = values_file.read_text()
    for name, spec in switches.items():
        if re.search(rf"^  {re.escape(name)}:", values, re.M):
            continue
        anchor = re.search(rf"^  {re.escape(spec['after'])}: .*$", values, re.M)
        if not anchor:
            raise SystemExit(f"lay: environments/values.yaml has no application {spec['after']!r} to follow")
        values = (
            values[: anchor.end()] + f"\n\n  # -- {spec['description']}\n  {name}: false" + values[anchor.end() :]
        )
        for environment, enabled in spec["environments"].items():
            env_file = phalanx / "environments" / f"values-{environment}.yaml"
            env_file.write_text(_set_in_applications_block(env_file.read_text(), name, str(enabled).lower()))
            done.append(f"environments/values-{environment}.yaml: applications.{name}: {str(enabled).lower()}")
        done.append(f"environments/values.yaml: applications.{name} (off by default)")
    values_file.write_text(values)
    (phalanx / "environments" / "README.md").write_text(helm_docs.readme(phalanx / "environments"))
    docs = PHALANX_DIR / "docs" / "applications"
    for app_docs in sorted(p for p in docs.iterdir() if p.is_dir()):
        target = phalanx / "docs" / "applications" / app_docs.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(app_docs, target)
        project = switches.get(app_docs.name, {}).get("project", "prompt")
        index = phalanx / "docs" / "applications" / f"{project}.rst"
        entry = f"   {app_docs.name}/index"
        text = index.read_text()
        if entry not in text.split("\n"):
            lines = text.split("\n")
            entries = [i for i, line in enumerate(lines) if re.match(r"^   [a-z0-9-]+/index$", line)]
            position = next((i for i in entries if lines[i] > entry), entries[-1] + 1)
            lines.insert(position, entry)
            index.write_text("\n".join(lines))
        done.append(f"docs/applications/{app_docs.name}")
    return done


# --- rendering and comparing -------------------------------------------------------------------


def _normalize(value: Any) -> Any:
    """A rendered resource as the API server keeps it: null fields are the same as absent ones."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items() if v is not None and k != "__template__"}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) of every difference; a missing side is None."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (o, n) in enumerate(zip(old, new)) for d in _differences(o, n, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def _get(document: dict, path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or inside it (a key or an index below it)."""
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def compare(app: str, deployed: list[dict], ours: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(summary, unexpected, detail) of replacing the deployed render of `app` with ours."""
    index_old = {f"{d['kind']}/{d['metadata']['name']}": _normalize(d) for d in deployed}
    index_new = {f"{d['kind']}/{d['metadata']['name']}": _normalize(d) for d in ours}
    expected = EXPECTED.get(app, {})
    summary, unexpected, detail = [], [], []
    for key in sorted(set(index_new) - set(index_old)):
        (summary if f"+{key}" in expected else unexpected).append(f"+ {key}")
        detail.append(f"+ {key}: {expected.get(f'+{key}', 'NOT EXPECTED')}")
    for key in sorted(set(index_old) - set(index_new)):
        (summary if f"-{key}" in expected else unexpected).append(f"- {key}")
        detail.append(f"- {key}: {expected.get(f'-{key}', 'NOT EXPECTED')}")
    for key in sorted(set(index_old) & set(index_new)):
        old, new = index_old[key], index_new[key]
        kind = key.split("/")[0]
        for field in IMMUTABLE.get(kind, []):
            # The API server stores an absent string field as "".
            if (_get(old, field) or "") != (_get(new, field) or ""):
                unexpected.append(f"{key}: immutable {field} differs: {_get(old, field)!r} -> {_get(new, field)!r}")
        changes = _differences(old, new)
        paths = [p for p, _, _ in changes]
        if not paths:
            continue
        allowed = [p.split(":", 1)[1] for p in expected if p.startswith(f"~{key}:")]
        stray = [p for p in paths if not any(_under(p, a) for a in allowed)]
        if stray:
            unexpected.append(f"~ {key}: {', '.join(stray[:8])}{' ...' if len(stray) > 8 else ''}")
        summary.append(f"~ {key} ({len(paths)} {'field' if len(paths) == 1 else 'fields'})")
        detail.append(f"~ {key}:")
        detail += [f"    {p}: {o!r} -> {n!r}" for p, o, n in changes]
    return summary, unexpected, detail


# --- the cross-check ---------------------------------------------------------------------------


def find_snapshot() -> Path | None:
    explicit = os.environ.get("PHALANX_SNAPSHOT")
    if explicit:
        return Path(explicit)
    found = sorted((ROOT.parent / "shared" / "phalanx").glob("phalanx-*.tgz"))
    return found[-1] if found else None


def _unpack(snapshot: Path, into: Path) -> Path:
    if snapshot.is_dir():
        shutil.copytree(snapshot, into, symlinks=True)
        return into
    with tarfile.open(snapshot) as archive:
        archive.extractall(into, filter="data")
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def _test_python() -> str | None:
    """A Python >= 3.13: PHALANX_TEST_PYTHON, python3.13 or later on the PATH, or pyenv's."""
    explicit = os.environ.get("PHALANX_TEST_PYTHON")
    candidates = [explicit] if explicit else []
    candidates += [shutil.which(n) for n in ("python3.14", "python3.13")]
    candidates += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[3-9]*/bin/python3"), reverse=True)]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 13))"], capture_output=True
        )
        if probe.returncode == 0:
            return candidate
    return None


def _test_environment(phalanx: Path) -> tuple[Path | None, str]:
    """A virtual environment with Phalanx's dependencies (pinned by its uv.lock) and pytest."""
    python = _test_python()
    if not python:
        return None, "Phalanx's tests need Python >= 3.13: none found (set PHALANX_TEST_PYTHON)"
    project = tomllib.loads((phalanx / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((phalanx / "uv.lock").read_text())
    pins = sorted(
        f"{p['name']}=={p['version']}"
        for p in lock.get("package", [])
        if p.get("name") != project["name"] and "version" in p
    )
    wanted = [*project["dependencies"], "pytest", "pytest-mock"]
    stamp_text = "\n".join([python, *wanted, *pins]) + "\n"
    venv = Path(os.environ.get("PHALANX_TEST_VENV", ROOT / "target" / "phalanx-tests-venv"))
    stamp = venv / ".stamp"
    if not (venv / "bin" / "python").is_file() or not stamp.is_file() or stamp.read_text() != stamp_text:
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            return None, f"cannot make a virtual environment with {python}: {made.stderr.strip()}"
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        installed = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             "-c", str(constraints), *wanted],
            capture_output=True, text=True,
        )
        if installed.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"installing Phalanx's dependencies failed:\n{installed.stdout}{installed.stderr}"
        stamp.write_text(stamp_text)
    return venv, ""


def cross_check(report: Any, snapshot: Path, render: Any, environments: Any, out_dir: Path) -> None:
    """Everything the Phalanx snapshot lets us check (see the module's description)."""
    with tempfile.TemporaryDirectory(prefix="phalanx-check-") as temporary:
        phalanx = _unpack(snapshot, Path(temporary) / "phalanx")
        label = f"Phalanx {snapshot.name}"

        # 1. The switch-over, rendered: deployed chart -> ours, per environment.
        out_dir.mkdir(parents=True, exist_ok=True)
        for app in our_applications():
            deployed_chart = phalanx / "applications" / app.name
            if not deployed_chart.is_dir():
                continue
            for environment in environments(app):
                if not (deployed_chart / f"values-{environment}.yaml").is_file():
                    continue
                deployed, _ = render(deployed_chart, environment)
                ours, _ = render(app, environment)
                summary, unexpected, detail = compare(app.name, deployed, ours)
                (out_dir / f"{app.name}-{environment}.txt").write_text(
                    f"Switch-over of {app.name} in {environment}: Phalanx's render -> ours. "
                    "The rollback is the reverse.\n" + "\n".join(detail) + "\n"
                )
                what = f"{label}: switch-over of {app.name} [{environment}]"
                if unexpected:
                    report.fail(what, "differences nobody declared (EXPECTED in phalanx_snapshot.py):\n" + "\n".join(unexpected))
                else:
                    pruned = [line[2:] for line in summary if line.startswith("+ ")]
                    report.ok(
                        f"{what}: in place, immutable fields equal; {'; '.join(summary) or 'no change'}; "
                        f"the rollback (the reverse) updates in place and prunes {', '.join(pruned) or 'nothing'}"
                    )

        # 2. Our files laid in, and Phalanx's own tests.
        laid = lay(phalanx)
        report.ok(f"{label}: laid in: {len(laid)} changes ({', '.join(a for a in laid if a.startswith('applications/'))})")
        venv, problem = _test_environment(phalanx)
        if venv is None:
            report.fail(f"{label}: tests/config_test.py", problem)
        else:
            run = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/config_test.py"],
                cwd=phalanx, capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(phalanx / "src")},
            )
            last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
            if run.returncode != 0:
                report.fail(f"{label}: tests/config_test.py", run.stdout[-6000:] + run.stderr[-2000:])
            else:
                report.ok(f"{label}: Phalanx's tests/config_test.py with ours laid in: {last.strip('= ')}")

        # Phalanx's own reading of our secrets.yaml: in each of our environments, the passwords
        # the services copy from prompt-kafka are not asked for, and prompt-kafka's are static
        # (set by hand, never generated: other applications keep copies of them).
        if venv is not None:
            for environment in sorted({e for app in our_applications() for e in environments(app)}):
                run = subprocess.run(
                    [str(venv / "bin" / "python"), "-c", "from phalanx.cli import main; main()",
                     "secrets", "static-template", environment, "--config", str(phalanx)],
                    cwd=phalanx, capture_output=True, text=True,
                    env={**os.environ, "PYTHONPATH": str(phalanx / "src")},
                )
                what = f"{label}: phalanx secrets static-template {environment}"
                if run.returncode != 0:
                    report.fail(what, run.stdout[-3000:] + run.stderr[-3000:])
                    continue
                static = (yaml.safe_load(run.stdout) or {}).get("applications", {})
                problems = []
                for app, key in STATIC_SECRETS:
                    if key not in static.get(app, {}):
                        problems.append(f"{app}/{key} should be set by hand but Phalanx does not ask for it")
                for app, key in COPIED_SECRETS:
                    if app in static and key in static[app]:
                        problems.append(f"{app}/{key} should be copied from prompt-kafka but Phalanx asks for it")
                if problems:
                    report.fail(what, "\n".join(problems))
                else:
                    report.ok(f"{what}: prompt-kafka's passwords static, the services' copies resolved by Phalanx")

        # 3. The README generator against every README in Phalanx, ours included.
        same, different = 0, []
        for top, dependencies in (("applications", True), ("charts", False), ("environments", False)):
            for chart_file in sorted((phalanx / top).rglob("Chart.yaml")):
                chart = chart_file.parent
                if not (chart / "README.md").is_file() or not (chart / "values.yaml").is_file():
                    continue
                wanted = (chart / "README.md").read_text()
                got = helm_docs.readme(chart, phalanx / top if dependencies else None)
                if got == wanted:
                    same += 1
                else:
                    different.append(str(chart.relative_to(phalanx)))
        if different:
            report.fail(f"{label}: README generator", f"{len(different)} of {same + len(different)} differ from helm-docs': {different}")
        else:
            report.ok(f"{label}: README generator writes all {same} READMEs of Phalanx (applications, charts, environments) byte for byte")

        # 4. Phalanx's schemas for secrets.yaml and the environment files.
        schemas = phalanx / "docs" / "extras" / "schemas"
        problems = []
        secrets_schema = yaml.safe_load((schemas / "secrets.json").read_text())
        for app in our_applications():
            for secrets in sorted(app.glob("secrets*.yaml")):
                for error in jsonschema.Draft202012Validator(secrets_schema).iter_errors(yaml.safe_load(secrets.read_text())):
                    problems.append(f"{app.name}/{secrets.name}: {error.message}")
        environment_schema = yaml.safe_load((schemas / "environment.json").read_text())
        for env_file in sorted((phalanx / "environments").glob("values*.yaml")):
            for error in jsonschema.Draft202012Validator(environment_schema).iter_errors(yaml.safe_load(env_file.read_text())):
                problems.append(f"environments/{env_file.name}: {error.message}")
        if problems:
            report.fail(f"{label}: Phalanx's JSON schemas", "\n".join(problems))
        else:
            report.ok(f"{label}: our secrets.yaml and the environment files valid against Phalanx's JSON schemas")

        # 5. The application metrics events against Sasquatch's app-metrics subchart.
        check_app_metrics(report, label, phalanx, render, environments)


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: deploy/phalanx/lay PHALANX_CHECKOUT", file=sys.stderr)
        return 2
    phalanx = Path(sys.argv[1])
    if not (phalanx / "applications").is_dir() or not (phalanx / "environments" / "values.yaml").is_file():
        print(f"lay: {phalanx} is not a Phalanx checkout", file=sys.stderr)
        return 2
    for line in lay(phalanx):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
