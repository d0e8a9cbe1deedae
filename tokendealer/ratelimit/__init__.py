"""Rate-limit state: GCRA over one or many keys in memory (``gcra``) or in Redis
(``redis_store``), shared by every worker and replica."""
