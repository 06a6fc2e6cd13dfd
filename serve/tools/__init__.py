"""Tools around the server, not part of answering a request: the HTTP client (``ln2d predict``),
the launcher that starts a server process and waits for it, the load generator and the serving
benchmark (``ln2d bench-serve``)."""
