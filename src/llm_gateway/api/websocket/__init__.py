"""The WebSocket endpoint (/v1/ws): every protocol's streams over one connection, as
messages (``protocol``), served by a ``session`` per connection (``routes``)."""
