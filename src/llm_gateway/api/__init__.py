"""Client-facing protocols, each a package of schemas, pure converters and thin
routes: OpenAI (``openai``, /v1) and Ollama (``ollama``, /api); the management
API (``manage``); and what they share: the request context (``context``), body
decoding (``decode``) and field validation (``validate``)."""
