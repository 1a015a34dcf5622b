"""README.md of a chart exactly as helm-docs (v1.14) writes it with Phalanx's template.

Phalanx's pre-commit runs helm-docs over ``applications/`` (with ``--document-dependency-values``),
``charts/`` and ``environments/``, with the template ``helm-docs.md.gotmpl`` (header, description,
homepage line, sources, values table). helm-docs is a Go program that no registry this project
reaches ships, so this module does what it does, and ``check.py`` proves it on Phalanx's own
charts: where the Phalanx snapshot is present, every README there must come out byte for byte.

What helm-docs does, as implemented here:

- The values file is parsed as YAML 1.2 (Go's yaml.v3: only ``true``/``false`` are booleans, Go's
  integer syntax with ``0x``/``0o``/``0b`` and leading-zero octals, ``_`` separators).
- Every leaf gets a row, documented or not. A key's documentation is the comment block right above
  it, from its last line starting with ``# --``: the text after ``--`` (``(type)`` first overrides
  the type), continuation lines appended with one space (a ``#`` line alone appends an empty
  string, so two spaces), ``# @default -- text`` overriding the default column. A comment whose
  first line reads ``# key -- text`` (old style, with a key) documents that key path instead.
- A documented map or list is one row (its value as compact JSON, keys sorted) and its children
  only get rows of their own if they are documented themselves. Empty maps and lists are rows.
  A key whose comment holds ``@ignore`` is left out with its value.
- Keys with a dot or a space are quoted in the key column (``config."log.retention.hours"``).
- With dependency values, the rows of each local subchart follow those of the chart, under the
  subchart's name (or alias), subcharts ordered by repository and name; ``global.*`` rows first.
- Rows are sorted by key. The page is the template's sections; then one space before each newline
  is dropped and runs of blank lines are squeezed to one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

# --- YAML as Go's yaml.v3 reads it -------------------------------------------------------------


class _PlainLoader(yaml.SafeLoader):
    """Composes nodes without PyYAML's YAML 1.1 implicit typing: every plain scalar keeps the
    default string tag and is typed by `_resolve` the way yaml.v3 does."""


_PlainLoader.yaml_implicit_resolvers = {}

_STR = "tag:yaml.org,2002:str"
_BOOL_TRUE = {"true", "True", "TRUE"}
_BOOL_FALSE = {"false", "False", "FALSE"}
_NULL = {"", "~", "null", "Null", "NULL"}
_FLOAT_SPECIAL = {
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
}  # fmt: skip
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ].*)?\Z")


def _go_parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) (then ParseUint): sign, 0x/0o/0b prefixes, a leading 0 for
    octal."""
    sign, body = 1, text
    if body[:1] in "+-":
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if not body:
        return None
    base, digits = 10, body
    lower = body.lower()
    if lower.startswith("0x"):
        base, digits = 16, body[2:]
    elif lower.startswith("0o"):
        base, digits = 8, body[2:]
    elif lower.startswith("0b"):
        base, digits = 2, body[2:]
    elif len(body) > 1 and body[0] == "0":
        base, digits = 8, body[1:]
    if not digits or not all(c in "0123456789abcdefABCDEF"[: base if base <= 10 else 22] for c in digits):
        return None
    value = sign * int(digits, base)
    if not -(2**63) <= value < 2**64:
        return None
    return value


def _resolve(node: yaml.ScalarNode) -> tuple[str, Any]:
    """(kind, value) of a scalar: kind is one of null, bool, int, float, str, timestamp."""
    text = node.value
    if node.style is not None or node.tag != _STR:
        # Quoted or block scalars and explicitly tagged ones keep their tag.
        if node.tag == "tag:yaml.org,2002:int":
            parsed = _go_parse_int(text.replace("_", ""))
            return ("int", parsed) if parsed is not None else ("str", text)
        if node.tag == "tag:yaml.org,2002:float":
            return "float", float(text)
        if node.tag == "tag:yaml.org,2002:bool":
            return "bool", text in _BOOL_TRUE
        if node.tag == "tag:yaml.org,2002:null":
            return "null", None
        return "str", text
    if text in _BOOL_TRUE:
        return "bool", True
    if text in _BOOL_FALSE:
        return "bool", False
    if text in _NULL:
        return "null", None
    if text in _FLOAT_SPECIAL:
        return "float", _FLOAT_SPECIAL[text]
    if text[:1] and text[0] in "+-.0123456789":
        if _TIMESTAMP.match(text):
            return "timestamp", text
        plain = text.replace("_", "")
        parsed = _go_parse_int(plain)
        if parsed is not None:
            return "int", parsed
        if _YAML_FLOAT.match(plain):
            return "float", float(plain)
    return "str", text


def _go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it (shortest round trip, exponent only below 1e-6
    or from 1e21)."""
    if value != value or value in (math.inf, -math.inf):
        raise ValueError("json: unsupported value")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = repr(value).partition("e")
        if not exponent:
            mantissa, _, exponent = f"{value:e}".partition("e")
        sign = "-" if exponent.startswith("-") else "+"
        return f"{mantissa}e{sign}{int(exponent.lstrip('+-')):02d}".replace("e+0", "e+").replace("e-0", "e-")
    text = format(Decimal(repr(value)).normalize(), "f")
    return text


def _go_json(value: Any) -> str:
    """encoding/json's output with HTML escaping off: compact, map keys sorted."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\\b", "\\u0008").replace(
            "\\f", "\\u000c"
        )
    if isinstance(value, list):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_go_json(str(k)) + ":" + _go_json(value[k]) for k in sorted(value, key=str)) + "}"
    raise TypeError(f"cannot encode {value!r}")


def _plain(node: yaml.Node) -> Any:
    """The node decoded as yaml.v3 decodes into interface{} (timestamps kept as text)."""
    if isinstance(node, yaml.MappingNode):
        return {str(_plain(k)): _plain(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v) for v in node.value]
    return _resolve(node)[1]


# --- comments ----------------------------------------------------------------------------------

_DESCRIPTION = re.compile(r"^\s*#\s*(.*)\s+--\s*(.*)$", re.ASCII)
_CONTINUATION = re.compile(r"^\s*#(\s?)(.*)$", re.ASCII)
_DEFAULT = re.compile(r"^\s*# @default -- (.*)$", re.ASCII)
_VALUE_TYPE = re.compile(r"^\((.*?)\)\s*(.*)$", re.ASCII)
_RAW = re.compile(r"^\s*#\s+@raw", re.ASCII)
_NOTATION = re.compile(r"^\s*#\s+@notationType\s+--\s+(.*)$", re.ASCII)
_SECTION = re.compile(r"^\s*# @section -- (.*)$", re.ASCII)


@dataclass
class Doc:
    description: str = ""
    default: str = ""
    value_type: str = ""


def parse_comment(lines: list[str]) -> tuple[str, Doc]:
    """(key, documentation) of a comment block: the key is empty for new-style `# --` comments."""
    last = 0
    for i, line in enumerate(lines):
        if line.startswith("# --"):
            last = i
    if last > 0:
        return parse_comment(lines[last:])
    doc, key, start = Doc(), "", 0
    for i, line in enumerate(lines):
        match = _DESCRIPTION.match(line)
        if match:
            key, doc.description, start = match[1], match[2], i
            break
    typed = _VALUE_TYPE.match(doc.description)
    if typed and typed[1]:
        doc.value_type, doc.description = typed[1], typed[2]
    raw = False
    for line in lines[start + 1 :]:
        if not raw and _RAW.match(line):
            raw = True
            continue
        default = _DEFAULT.match(line)
        if default:
            doc.default = default[1]
            continue
        if _NOTATION.match(line):
            raise NotImplementedError("@notationType is not supported")
        if _SECTION.match(line):
            raise NotImplementedError("@section is not supported")
        continuation = _CONTINUATION.match(line)
        if continuation:
            doc.description += ("\n" if raw else " ") + continuation[2]
    return key, doc


def old_style_descriptions(lines: list[str]) -> dict[str, Doc]:
    """Comments naming their key (`# path.to.key -- text`), found by scanning the file's lines."""
    found: dict[str, Doc] = {}
    block: list[str] = []
    for line in lines:
        if not block:
            match = _DESCRIPTION.match(line)
            if match and match[1]:
                block.append(line)
            continue
        if _DEFAULT.match(line) or _SECTION.match(line) or _CONTINUATION.match(line):
            block.append(line)
            continue
        key, doc = parse_comment(block)
        if key:
            found[key] = doc
        block = []
    return found


# --- rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str
    dependency: str = ""
    is_global: bool = False


@dataclass
class _Line:
    """What the scanner sees on a line: `content` (a token), with the indentation of the block
    collection it belongs to and whether its last token is a key's `:` with the value below."""

    content: bool = False
    indent: int = 0
    value_below: bool = False


@dataclass
class Values:
    root: yaml.Node | None
    lines: list[str]
    old_style: dict[str, Doc] = field(default_factory=dict)
    scan: list[_Line] = field(default_factory=list)

    def head_comment(self, node: yaml.Node | None, item: bool = False) -> list[str]:
        """The head comment yaml.v3 gives the key (or block list item) `node`.

        yaml.v3 splits the comment lines between two tokens into the foot of the first and the
        head of the second: a group that ends at the first blank line right after the previous
        token's line, or one followed by a line dedented below the current block (at a column
        other than the group's), is a foot. At the top of the document, what precedes the last
        blank line is the document's own comment."""
        if node is None:
            return []
        line = node.start_mark.line
        lead = self.lines[line][: node.start_mark.column]
        if lead.strip(" -" if item else " "):
            return []
        previous = next((i for i in range(line - 1, -1, -1) if self.scan[i].content), None)
        if previous is None:
            foot_line, next_indent, value_token, first = -1, 0, False, True
        else:
            state = self.scan[previous]
            foot_line, next_indent, value_token, first = previous + 1, state.indent, state.value_below, False
        text: list[str] = []
        start_line = start_col = -1
        first_empty = previous is None or not (previous + 1 < line and not self.lines[previous + 1].strip())
        recent_empty = False
        for i in range((previous if previous is not None else -1) + 1, line + 1):
            raw = self.lines[i]
            stripped = raw.strip()
            if i < line and not stripped:
                if not recent_empty:
                    if first_empty and ((start_line == foot_line and not value_token) or start_col < next_indent):
                        text = []  # a foot of the previous token
                    elif text:
                        text.append("")
                first_empty, recent_empty = False, True
                continue
            column = len(raw) - len(raw.lstrip())
            if i == line and not item:
                column = node.start_mark.column
            if text and column < next_indent and column != start_col:
                text = []  # at another indentation: a foot of what precedes
            if i == line:
                break
            if not text:
                start_line, start_col = i, column
            text.append(stripped)
            recent_empty = False
        while text and text[-1] == "":
            text.pop()
        if first and "" in text:
            cut = len(text) - text[::-1].index("")
            text = text[cut:]
        return text

    def auto_doc(self, node: yaml.Node | None, item: bool = False) -> Doc:
        comment = self.head_comment(node, item)
        if not any("# --" in line for line in comment):
            return Doc()
        key, doc = parse_comment(comment)
        return Doc() if key else doc


def _scan_lines(values: Values, node: yaml.Node, indent: int) -> None:
    """Marks the lines holding tokens, with the indentation of their block collection."""

    def mark(first: int, last: int, indent: int, value_below: bool = False) -> None:
        for i in range(first, last + 1):
            values.scan[i] = _Line(True, indent, value_below)

    def last_line(n: yaml.Node) -> int:
        end = n.end_mark
        return end.line - 1 if end.column == 0 and end.line > n.start_mark.line else end.line

    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.flow_style:
        mark(node.start_mark.line, last_line(node), indent)
        return
    if isinstance(node, yaml.MappingNode):
        column = node.start_mark.column
        for key, value in node.value:
            below = value.start_mark.line > key.start_mark.line
            mark(key.start_mark.line, last_line(key), column, below)
            if isinstance(value, yaml.ScalarNode):
                # On the key's line it is the line's last token; below, the key line keeps `:`.
                mark(value.start_mark.line, last_line(value), column)
            else:
                _scan_lines(values, value, column)
    elif isinstance(node, yaml.SequenceNode):
        column = node.start_mark.column
        for item in node.value:
            if isinstance(item, yaml.ScalarNode):
                mark(item.start_mark.line, last_line(item), column)
            else:
                _scan_lines(values, item, column)
    else:
        mark(node.start_mark.line, last_line(node), indent)


def load_values(path: Path) -> Values:
    text = path.read_text().replace("\r\n", "\n")
    root = yaml.compose(text, Loader=_PlainLoader)
    lines = text.split("\n")
    values = Values(root, lines, old_style_descriptions(lines), [_Line() for _ in lines])
    if root is not None:
        _scan_lines(values, root, 0)
        _drop_ignored(values, root)
    return values


def _drop_ignored(values: Values, node: yaml.Node) -> None:
    if isinstance(node, yaml.MappingNode):
        node.value = [
            (k, v) for k, v in node.value if not any("@ignore" in c for c in values.head_comment(k))
        ]
        for _, v in node.value:
            _drop_ignored(values, v)
    elif isinstance(node, yaml.SequenceNode):
        node.value = [v for v in node.value if not any("@ignore" in c for c in values.head_comment(v, True))]
        for v in node.value:
            _drop_ignored(values, v)


def _object_key(prefix: str, key: str) -> str:
    if "." in key or " " in key:
        key = f'"{key}"'
    return f"{prefix}.{key}" if prefix else key


def _row(key: str, kind: str, value: Any, old: Doc | None, auto: Doc) -> Row:
    old = old or Doc()
    description = old.description or auto.description
    if kind == "null":
        value_type = old.value_type or auto.value_type or "string"
        default = old.default or auto.default or "`nil`"
        return Row(key, value_type, default, description)
    value_type = old.value_type or auto.value_type or kind
    if old.default:
        default = old.default
    elif auto.default:
        default = auto.default
    else:
        default = "`" + _go_json(value) + "`"
    return Row(key, value_type, default, description)


def _rows(
    values: Values, prefix: str, key: yaml.Node | None, node: yaml.Node, leaves: bool, item: bool = False
) -> list[Row]:
    old = values.old_style.get(prefix)
    auto = values.auto_doc(key, item)
    documented = old is not None or auto.description != ""
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        is_map = isinstance(node, yaml.MappingNode)
        if not node.value:
            if is_map and prefix == "":
                return []
            if not (leaves or documented):
                return []
            return [_row(prefix, "object" if is_map else "list", {} if is_map else [], old, auto)]
        rows: list[Row] = []
        if documented:
            rows.append(_row(prefix, "object" if is_map else "list", _plain(node), old, auto))
            leaves = False
        if is_map:
            for k, v in node.value:
                rows += _rows(values, _object_key(prefix, str(_plain(k))), k, v, leaves)
        else:
            for i, v in enumerate(node.value):
                rows += _rows(values, f"{prefix}[{i}]", v, v, leaves, item=True)
        return rows
    if not (leaves or documented):
        return []
    kind, value = _resolve(node)
    if kind == "timestamp":
        kind = "str"
    kind = {"str": "string", "null": "null"}.get(kind, kind)
    return [_row(prefix, kind, value, old, auto)]


def value_rows(values: Values) -> list[Row]:
    if values.root is None:
        return []
    if not isinstance(values.root, yaml.MappingNode):
        raise ValueError("values file must resolve to a map")
    return _rows(values, "", None, values.root, True)


# --- charts and the page -----------------------------------------------------------------------


@dataclass
class ChartInfo:
    directory: Path
    meta: dict[str, Any]
    values: Values


def load_chart(directory: Path) -> ChartInfo | None:
    """A chart as helm-docs reads it, or None where it would skip it (no Chart.yaml or values)."""
    directory = directory.resolve()
    chart_file, values_file = directory / "Chart.yaml", directory / "values.yaml"
    if not chart_file.is_file() or not values_file.is_file():
        return None
    meta = yaml.safe_load(chart_file.read_text().replace("\r\n", "\n")) or {}
    return ChartInfo(directory, meta, load_values(values_file))


def _dependency_values(chart: ChartInfo, prefix: str, root: Path) -> list[tuple[str, ChartInfo]]:
    dependencies = sorted(
        chart.meta.get("dependencies") or [],
        key=lambda d: f"{d.get('repository') or ''}/{d.get('name') or ''}",
    )
    out: list[tuple[str, ChartInfo]] = []
    for dependency in dependencies:
        repository = dependency.get("repository") or ""
        if repository.startswith("file://"):
            path = chart.directory / repository[len("file://") :]
        elif repository:
            # A remote chart: only its packaged archive could be read, which helm-docs finds
            # only among chart directories, that is never.
            continue
        else:
            path = chart.directory / "charts" / dependency["name"]
        path = Path(_normalize(path))
        # helm-docs looks dependencies up among the charts it found under its search root.
        info = load_chart(path) if path.is_relative_to(root) else None
        if info is None:
            continue
        name = prefix + (dependency.get("alias") or dependency["name"])
        out.append((name, info))
        out += _dependency_values(info, name + ".", root)
    return out


def _normalize(path: Path) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts and parts[-1] not in ("..", "/"):
                parts.pop()
                continue
        elif part == ".":
            continue
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def chart_rows(chart: ChartInfo, search_root: Path | None) -> list[Row]:
    rows = value_rows(chart.values)
    dependencies = _dependency_values(chart, "", search_root) if search_root else []
    if dependencies:
        seen_globals = set()
        for row in rows:
            if row.key.startswith("global."):
                row.is_global = True
                seen_globals.add(row.key)
        for name, info in dependencies:
            for row in value_rows(info.values):
                if row.key.startswith("global."):
                    if row.key in seen_globals:
                        continue
                    row.is_global = True
                    seen_globals.add(row.key)
                else:
                    row.key = f"{name}.{row.key}"
                row.dependency = name
                rows.append(row)
    # Globals first, then the chart's own rows, then each dependency's; by key within each.
    rows.sort(key=lambda r: (0, "", r.key) if r.is_global else (1, r.dependency, r.key))
    return rows


def readme(chart_dir: Path, dependency_root: Path | None = None) -> str:
    """The README.md helm-docs writes for the chart with Phalanx's `helm-docs.md.gotmpl`.

    `dependency_root`: with `--document-dependency-values`, the chart search root (Phalanx's
    `applications/`), where local subcharts are looked up; None documents the chart alone."""
    chart = load_chart(chart_dir)
    if chart is None:
        raise FileNotFoundError(f"{chart_dir}: no Chart.yaml or values.yaml")
    meta = chart.meta
    rows = chart_rows(chart, dependency_root.resolve() if dependency_root else None)
    header = f"# {meta.get('name') or ''}\n"
    description = str(meta.get("description") or "")
    homepage = f"**Homepage:** <{meta['home']}>" if meta.get("home") else ""
    sources = ""
    if meta.get("sources"):
        sources = "## Source Code\n" + "".join(f"\n* <{s}>" for s in meta["sources"])
    values = ""
    if rows:
        values = "## Values\n\n| Key | Type | Default | Description |\n|-----|------|---------|-------------|"
        values += "".join(f"\n| {r.key} | {r.type} | {r.default} | {r.description} |" for r in rows)
    page = f"{header}\n\n{description}\n\n{homepage}\n\n{sources}\n\n{values}\n"
    page = re.sub(" \n", "\n", page)
    return re.sub("\n{3,}", "\n\n", page)
