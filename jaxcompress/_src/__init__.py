"""Private implementation: import from the public modules (``jaxcompress``, ``jaxcompress.prune``, ...)."""
