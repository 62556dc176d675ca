"""Backends: where a model's tokens come from (in-process engine, dummy; upstreams later)."""
