"""What requests did: one usage record each (``record``), buffered and written to
the store (``recorder``), exported and pruned (``export``), kept in memory as
columns (``columns``) for statistics (``stats``, percentiles from
``histograms``), and counted for Prometheus (``metrics``)."""
