"""Multi-host runs: ``jax.distributed`` init, the global mesh, each process's rows of the global batch."""

from jaxcompress._src.distributed import global_batch, global_mesh, initialize, process_rows

__all__ = ["global_batch", "global_mesh", "initialize", "process_rows"]
