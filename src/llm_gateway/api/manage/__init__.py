"""The management API: probes and service info (``health``), key management
(``keys``), usage statistics and metrics (``stats``), the admin dashboard
(``dashboard``)."""
