"""The in-process llama.cpp engine: ctypes layer, chat templates, batching scheduler."""
