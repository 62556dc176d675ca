"""Backends: where a model's tokens come from.

The contract (``base``) and how a models-file entry names one (``spec``); the
kinds a gateway knows (``registry``: the built-in ``engine``, ``dummy`` and
``upstream`` kinds, plus any a plugin registers under the
``llm_gateway.backends`` entry-point group)."""
