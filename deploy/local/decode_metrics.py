#!/usr/bin/env python3
"""Decodes application metrics events with fastavro, independently of the Rust code that wrote
them: each stdin line is one Kafka message value, base64; each stdout line is that event as JSON
(`{"schema_id", "subject_name", "namespace", "event": {...}}`), or `{"error": ...}`.

    decode_metrics.py --registry http://127.0.0.1:PORT < values.b64

The schema comes from the registry by the id in the message (the Confluent wire format: magic byte
0, 4-byte big-endian id, Avro binary body); a body with bytes left over is an error.
"""

import argparse
import base64
import io
import json
import struct
import sys
import urllib.request

import fastavro


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True)
    args = parser.parse_args()
    schemas = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            value = base64.b64decode(line)
            if len(value) < 5 or value[0] != 0:
                raise ValueError(f"not the Confluent wire format (first byte {value[:1]!r})")
            (schema_id,) = struct.unpack(">I", value[1:5])
            if schema_id not in schemas:
                url = f"{args.registry.rstrip('/')}/schemas/ids/{schema_id}"
                with urllib.request.urlopen(url, timeout=10) as response:
                    text = json.load(response)["schema"]
                schemas[schema_id] = (json.loads(text), fastavro.parse_schema(json.loads(text)))
            raw, parsed = schemas[schema_id]
            body = io.BytesIO(value[5:])
            event = fastavro.schemaless_reader(body, parsed)
            left = len(value) - 5 - body.tell()
            if left:
                raise ValueError(f"{left} bytes left after the record")
            print(
                json.dumps(
                    {
                        "schema_id": schema_id,
                        "name": raw.get("name"),
                        "namespace": raw.get("namespace"),
                        "event": event,
                    },
                    default=str,
                ),
                flush=True,
            )
        except Exception as error:  # noqa: BLE001 - reported per line, the caller judges
            print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)


if __name__ == "__main__":
    main()
