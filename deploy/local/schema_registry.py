#!/usr/bin/env python3
"""A schema registry for the local stack and the tests: the part of the Confluent Schema Registry
REST API that application metrics events use, on loopback, standard library only.

    schema_registry.py --port PORT --data FILE

Calls (JSON bodies, `application/vnd.schemaregistry.v1+json`):
  PUT  /config/{subject}             {"compatibility": "NONE"}  -> {"compatibility": "NONE"}
  GET  /config/{subject}                                        -> {"compatibilityLevel": ...}
  POST /subjects/{subject}/versions  {"schema": "<avro json>"}  -> {"id": N}
  POST /subjects/{subject}           {"schema": "<avro json>"}  -> {"subject", "id", "version", "schema"}
  GET  /subjects                                                -> ["subject", ...]
  GET  /subjects/{subject}/versions                             -> [1, 2, ...]
  GET  /subjects/{subject}/versions/{version|latest}            -> {"subject", "id", "version", "schema"}
  GET  /schemas/ids/{id}                                        -> {"schema": "<avro json>"}

As the real registry does, a schema gets one id wherever it is registered (schemas are compared
after parsing, so whitespace does not matter), registering it again under a subject returns the
same id without a new version, and an unparsable schema is refused with error 42201. Everything is
kept in the data file, so ids survive a restart. Compatibility is recorded, not enforced (every
subject our services make is NONE).
"""

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class Store:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.schemas = []  # index + 1 is the id
        self.subjects = {}  # subject -> [schema id per version]
        self.config = {}
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            self.schemas = data["schemas"]
            self.subjects = data["subjects"]
            self.config = data["config"]

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"schemas": self.schemas, "subjects": self.subjects, "config": self.config}, f
            )
        os.replace(tmp, self.path)

    def id_of(self, canonical):
        for index, text in enumerate(self.schemas):
            if json.loads(text) == canonical:
                return index + 1
        return None


def canonical(text):
    """The parsed schema, or None if it is not JSON an Avro schema could be."""
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return None
    if isinstance(parsed, dict) and "type" in parsed:
        return parsed
    if isinstance(parsed, (str, list)):
        return parsed
    return None


class Handler(BaseHTTPRequestHandler):
    store: Store = None
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        print(f"{self.address_string()} {format % args}", flush=True)

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.reply(status, {"error_code": code, "message": message})

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None

    def do_GET(self):  # noqa: N802 - the base class's name
        store = self.store
        path = self.path.split("?")[0].rstrip("/")
        with store.lock:
            if path == "/subjects":
                return self.reply(200, sorted(store.subjects))
            m = re.fullmatch(r"/schemas/ids/(\d+)", path)
            if m:
                index = int(m[1]) - 1
                if 0 <= index < len(store.schemas):
                    return self.reply(200, {"schema": store.schemas[index]})
                return self.error(404, 40403, f"Schema {m[1]} not found")
            m = re.fullmatch(r"/config/([^/]+)", path)
            if m:
                if m[1] in store.config:
                    return self.reply(200, {"compatibilityLevel": store.config[m[1]]})
                return self.error(404, 40408, f"Subject '{m[1]}' does not have subject-level compatibility configured")
            m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
            if m:
                if m[1] not in store.subjects:
                    return self.error(404, 40401, f"Subject '{m[1]}' not found.")
                return self.reply(200, list(range(1, len(store.subjects[m[1]]) + 1)))
            m = re.fullmatch(r"/subjects/([^/]+)/versions/(\d+|latest)", path)
            if m:
                versions = store.subjects.get(m[1])
                if not versions:
                    return self.error(404, 40401, f"Subject '{m[1]}' not found.")
                version = len(versions) if m[2] == "latest" else int(m[2])
                if not 1 <= version <= len(versions):
                    return self.error(404, 40402, f"Version {m[2]} not found.")
                schema_id = versions[version - 1]
                return self.reply(
                    200,
                    {
                        "subject": m[1],
                        "version": version,
                        "id": schema_id,
                        "schema": store.schemas[schema_id - 1],
                    },
                )
        return self.error(404, 404, f"HTTP 404 Not Found: {path}")

    def do_PUT(self):  # noqa: N802
        store = self.store
        path = self.path.split("?")[0].rstrip("/")
        m = re.fullmatch(r"/config/([^/]+)", path)
        body = self.body()
        if not m:
            return self.error(404, 404, f"HTTP 404 Not Found: {path}")
        level = (body or {}).get("compatibility")
        allowed = {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"}
        if level not in allowed:
            return self.error(422, 42203, f"Invalid compatibility level {level!r}")
        with store.lock:
            store.config[m[1]] = level
            store.save()
        return self.reply(200, {"compatibility": level})

    def do_POST(self):  # noqa: N802
        store = self.store
        path = self.path.split("?")[0].rstrip("/")
        body = self.body()
        m = re.fullmatch(r"/subjects/([^/]+)(/versions)?", path)
        if not m:
            return self.error(404, 404, f"HTTP 404 Not Found: {path}")
        if body is None or not isinstance(body.get("schema"), str):
            return self.error(422, 42201, "Invalid schema: the body needs a 'schema' string")
        if body.get("schemaType", "AVRO") != "AVRO":
            return self.error(422, 42201, "Only AVRO schemas are supported here")
        parsed = canonical(body["schema"])
        if parsed is None:
            return self.error(422, 42201, "Invalid schema: not an Avro schema")
        subject, register = m[1], bool(m[2])
        with store.lock:
            schema_id = store.id_of(parsed)
            versions = store.subjects.get(subject, [])
            if not register:
                if schema_id is None or schema_id not in versions:
                    return self.error(404, 40403, "Schema not found")
                return self.reply(
                    200,
                    {
                        "subject": subject,
                        "id": schema_id,
                        "version": versions.index(schema_id) + 1,
                        "schema": store.schemas[schema_id - 1],
                    },
                )
            if schema_id is None:
                store.schemas.append(json.dumps(parsed, separators=(",", ":")))
                schema_id = len(store.schemas)
            if schema_id not in versions:
                store.subjects.setdefault(subject, []).append(schema_id)
            store.save()
        return self.reply(200, {"id": schema_id})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", required=True, help="the JSON file the registry is kept in")
    args = parser.parse_args()
    Handler.store = Store(args.data)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"schema registry on http://{args.host}:{args.port} (data {args.data})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
