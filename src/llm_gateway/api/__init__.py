"""Client-facing protocols: OpenAI (/v1) and Ollama (/api), each schemas + converters + routes."""
