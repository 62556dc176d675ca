"""Upstream inference servers as backends: the models-file spec and the app's HTTP
pool (``config``), replicas with breakers (``replicas``), the backend itself
(``backend``), reading its answers (``reading``), each kind's protocol (``protocols``),
the wire formats (``wire``, ``wire_anthropic``...) and the lean HTTP/1.1
client (``http1``, ``connection``)."""
