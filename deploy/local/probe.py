#!/usr/bin/env python3
"""Network helpers for deploy/local/stack, standard library only (any Python 3).

    probe.py free-port               print a loopback TCP port that is free now
    probe.py port-free PORT          exit 0 if nothing listens on 127.0.0.1:PORT and it can be bound
    probe.py kafka-metadata HOST:PORT [TIMEOUT]
                                     send a Kafka Metadata (v1) request and print the brokers it
                                     advertises as "node_id host:port", one a line; exit 1 on failure
"""

import socket
import struct
import sys
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a socket in TIME_WAIT does not make the port busy for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


def _string(buf: bytes, pos: int):
    (length,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    if length < 0:
        return None, pos
    return buf[pos : pos + length].decode(), pos + length


def kafka_metadata(address: str, timeout: float) -> list:
    """Metadata v1 with an empty topic array (no topics), the smallest request that proves the
    broker serves the Kafka protocol and knows its advertised listener."""
    host, _, port = address.rpartition(":")
    client_id = b"prompt-kafka-stack"
    correlation_id = 7
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        resp = _recv_exact(sock, size)
    (got_correlation,) = struct.unpack_from(">i", resp, 0)
    if got_correlation != correlation_id:
        raise ValueError(f"unexpected correlation id {got_correlation}")
    (count,) = struct.unpack_from(">i", resp, 4)
    pos = 8
    brokers = []
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", resp, pos)
        broker_host, pos = _string(resp, pos + 4)
        (broker_port,) = struct.unpack_from(">i", resp, pos)
        _rack, pos = _string(resp, pos + 4)
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def main(argv: list) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[0]
    if command == "free-port":
        print(free_port())
        return 0
    if command == "port-free":
        return 0 if port_free(int(argv[1])) else 1
    if command == "kafka-metadata":
        timeout = float(argv[2]) if len(argv) > 2 else 5.0
        started = time.monotonic()
        try:
            brokers = kafka_metadata(argv[1], timeout)
        except (OSError, ValueError, struct.error) as err:
            print(f"kafka metadata request to {argv[1]} failed: {err}", file=sys.stderr)
            return 1
        for node_id, host, port in brokers:
            print(f"{node_id} {host}:{port}")
        print(f"metadata in {1000 * (time.monotonic() - started):.0f} ms", file=sys.stderr)
        return 0 if brokers else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
