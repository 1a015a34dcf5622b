#!/usr/bin/env bash
# Builds libFuzzer's seed corpora from the fixture messages `deploy/local/stack up` generates with
# daf_butler (run time only: fuzz/corpus/ is gitignored).
#
#   fuzz/corpus/parse_message/  a sample of the messages, one file per line, plus one
#                               batch-ingested event and one batch file (the other two parsers)
#   fuzz/corpus/decode_region/  the sphgeom region bytes (hex-decoded "region" fields of the
#                               dimension records) of every message, deduplicated
#
# Usage: fuzz/seed.sh [MESSAGES_DIR]   (default $PROMPT_KAFKA_FIXTURES/messages, or
#                                      deploy/local/.state/fixtures/messages)
# Env:   EVERY=N  keep every Nth line of the files with more than 10 lines (default 10); files
#                 with 10 lines or fewer are taken whole.
# Files are named by the SHA-1 of their content, as libFuzzer names its own, so running the
# script again (or after a fuzzing run) adds nothing twice.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fixtures=${PROMPT_KAFKA_FIXTURES:-$here/../deploy/local/.state/fixtures}
messages=${1:-$fixtures/messages}
every=${EVERY:-10}

shopt -s nullglob
files=("$messages"/*.jsonl)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "seed.sh: no *.jsonl in $messages: run deploy/local/stack up (it generates the fixtures), or name a directory of messages" >&2
    exit 1
fi

mkdir -p "$here/corpus/parse_message" "$here/corpus/decode_region"

python3 - "$here/corpus" "$every" "${files[@]}" <<'EOF'
import hashlib
import json
import math
import struct
import sys
from pathlib import Path

corpus, every, files = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]


def put(target: str, data: bytes) -> bool:
    path = corpus / target / hashlib.sha1(data).hexdigest()
    if path.exists():
        return False
    path.write_bytes(data)
    return True


messages = regions = 0
for name in files:
    lines = [line for line in Path(name).read_bytes().splitlines() if line.strip()]
    step = 1 if len(lines) <= 10 else every
    for number, line in enumerate(lines):
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if number % step == 0:
            messages += put("parse_message", line)
        records = message.get("dimension_records", []) if isinstance(message, dict) else []
        for record in records:
            region = (record.get("record") or {}).get("region")
            if isinstance(region, str):
                try:
                    regions += put("decode_region", bytes.fromhex(region))
                except ValueError:
                    pass

# The two other parsers the target feeds every input to: the writer's event and its batch file.
batch_id = "5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c"
messages += put(
    "parse_message",
    json.dumps(
        {
            "type": "batch-ingested",
            "batch_id": batch_id,
            "origin": "prompt_processing",
            "batch_file": f"2025-12-04T19-03-27-123456-{batch_id}.json",
        },
        separators=(",", ":"),
    ).encode(),
)
messages += put(
    "parse_message",
    json.dumps(
        {
            "batch_id": batch_id,
            "datasets": [
                "26c6235f-2ea3-5a15-8009-a3056e49c379",
                "07f98c57-9075-5e6c-a710-8aa4bfbe74a3",
            ],
        },
        separators=(",", ":"),
    ).encode(),
)

# The fixtures' regions are 4- and 8-vertex polygons, and mutations seldom keep vertices on the unit
# sphere, so the fuzzer alone does not reach polygons with more than 16 edges (the envelope's
# heap path) or vertices exactly on trixel edges (the exact orientation path). Add a few:
# regular counter-clockwise N-gons, small (a detector) to large (a hemisphere cap), and the
# octant X, Y, Z, whose edges lie on root trixel edges.
def unit(x: float, y: float, z: float) -> tuple[float, float, float]:
    n = math.sqrt(x * x + y * y + z * z)
    return (x / n, y / n, z / n)


def ngon(ra: float, dec: float, radius: float, count: int) -> bytes:
    ra, dec, radius = map(math.radians, (ra, dec, radius))
    c = (math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec))
    e1 = (-math.sin(ra), math.cos(ra), 0.0)
    e2 = (c[1] * e1[2] - c[2] * e1[1], c[2] * e1[0] - c[0] * e1[2], c[0] * e1[1] - c[1] * e1[0])
    out = bytearray(b"\x70")
    for k in range(count):
        t = 2 * math.pi * k / count
        a, b = math.sin(radius) * math.cos(t), math.sin(radius) * math.sin(t)
        out += struct.pack(
            "<3d", *unit(*(math.cos(radius) * c[i] + a * e1[i] + b * e2[i] for i in range(3)))
        )
    return bytes(out)


for ra, dec, radius, count in [
    (150.0, -30.0, 0.15, 3),
    (10.0, 45.0, 1.75, 5),
    (200.0, -60.0, 1.75, 8),
    (45.0, 0.0, 2.0, 17),
    (300.0, 89.0, 5.0, 33),
    (0.0, 0.0, 80.0, 64),
]:
    regions += put("decode_region", ngon(ra, dec, radius, count))
regions += put("decode_region", b"\x70" + struct.pack("<9d", 1, 0, 0, 0, 1, 0, 0, 0, 1))

print(f"seed.sh: {messages} new messages in {corpus}/parse_message, "
      f"{regions} new regions in {corpus}/decode_region")
EOF
