"""Per-key sliding-window rate limits: the contract and value types (``base``),
OpenAI's x-ratelimit-* headers (``headers``), and two backends behind one
interface: this process's memory (``memory``) or Redis shared by replicas
(``redis``, with its leases in ``lease``, its batched Lua calls in ``batch``
and the lean RESP client in ``resp``)."""
