"""The edge: what every request passes before a protocol sees it, outermost first.

The HTTP server (``http_server``), then pure-ASGI middleware: the request id
and usage record (``usage_middleware``), the body limit (``body_limit``),
authentication (``auth``) and the inference routes' dispatcher
(``fast_routes``); and the response types and error rendering every layer
above it answers with (``responses``, ``render``). Nothing here knows a
protocol's wire format: the protocols hand their error renderers in.
"""
