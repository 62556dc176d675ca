"""The Ollama-compatible API (/api/generate, /api/chat, /api/tags, /api/show, ...)."""
