"""The core: one path for every protocol's inference request.

``registry`` maps model names to backends (built from ``model_specs``),
``principal`` says who is calling, ``admission`` applies the caller's rate
limits, and ``service`` opens a generation through all of them. Everything
here speaks only the internal types (``llm_gateway.types``).
"""
