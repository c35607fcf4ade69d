"""Free local ports for tests that start servers (one helper for every suite; tests/ is on sys.path
through tests/conftest.py's folder)."""
from __future__ import annotations

import socket


def free_port_range(span: int = 1, host: str = "127.0.0.1") -> int:
    """A port p with p .. p+span-1 free now (nothing bound or listening there)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port + span > 65000:
            continue
        ok = True
        for q in range(port + 1, port + span):
            with socket.socket() as s:
                try:
                    s.bind((host, q))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError(f"no {span} consecutive free ports")
