"""Multi-host runs on JAX's own runtime: distributed init, the global mesh, per-process data.

One process runs per host (a TPU VM worker, a GPU node, or a CPU process on
loopback). :func:`initialize` calls ``jax.distributed.initialize``;
:func:`global_mesh` lays every process's devices out in one
``jax.sharding.Mesh``; :func:`process_rows` says which rows of a global batch
this process feeds and :func:`global_batch` assembles the global array from
each process's rows (``jax.make_array_from_process_local_data``). A jitted
step over that mesh then runs the same program on every process, with XLA's
collectives (ICI/NCCL/gloo) between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["global_batch", "global_mesh", "initialize", "process_rows"]


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> tuple[int, int]:
    """Joins this process to a multi-process run; returns ``(process_index, process_count)``.

    Call it first, before any JAX computation. With no arguments JAX detects
    the cluster (TPU VMs, SLURM, Open MPI). Elsewhere give all three:
    ``coordinator`` is ``"host:port"`` of process 0, reachable from every
    process. CPU devices then talk through gloo, also within one process:
    a one-process run (``num_processes=1``) reduces in the same order as a
    multi-process one and gives the same bits (XLA's in-process collectives
    sum in another order, a last-bit difference).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "Give all of `coordinator`, `num_processes` and `process_id`, or none (the cluster is then "
            f"detected); got coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r}."
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"`process_id` must be in [0, {num_processes}), got {process_id}.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' collectives across processes
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_index(), jax.process_count()


def global_mesh(axes: Mapping[str, int]) -> Mesh:
    """A mesh (Auto axes) over every device of every process, with ``axes`` as ``{name: size}`` (one size may be -1).

    The first axis is the slowest-varying one: give ``{"data": -1, "fsdp": 4}``
    to place each FSDP group on neighbouring devices (one host, on most
    topologies) and data parallelism across hosts.
    """
    names, sizes = list(axes), list(axes.values())
    n = jax.device_count()
    if sizes.count(-1) > 1 or any(not isinstance(s, int) or s == 0 or s < -1 for s in sizes):
        raise ValueError(f"`axes` sizes must be positive ints, with at most one -1; got {dict(axes)}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices cannot be split into `axes` {dict(axes)}: {known} does not divide {n}.")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(f"`axes` {dict(axes)} hold {int(np.prod(sizes))} devices; this run has {n}.")
    # Auto axes: XLA propagates shardings through the compression code (explicit axes type every op's sharding).
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names))


def process_rows(global_size: int, sharding: NamedSharding) -> slice:
    """The rows of a global batch of ``global_size`` that this process feeds under ``sharding``."""
    shape = (global_size,)
    spans = sorted(
        {index[0].indices(global_size)[:2] for index in sharding.addressable_devices_indices_map(shape).values()}
    )
    for (_, stop), (start, _) in itertools.pairwise(spans):
        if start != stop:
            raise ValueError(
                f"This process's devices hold rows {spans} of the batch, not one contiguous block: order the mesh so "
                f"each process's devices are neighbours along the batch axes (jc.train.distributed.global_mesh does)."
            )
    return slice(spans[0][0], spans[-1][1])


def global_batch(local: Any, sharding: NamedSharding, global_size: int) -> Any:
    """The global batch arrays from this process's rows (``local``: a pytree of arrays of those rows).

    ``sharding`` shards the leading (batch) axis; every leaf of ``local``
    holds the rows :func:`process_rows` names.
    """
    rows = process_rows(global_size, sharding)

    def assemble(x):
        x = np.asarray(x)
        if x.shape[0] != rows.stop - rows.start:
            raise ValueError(
                f"This process must feed rows {rows.start}:{rows.stop} of the global batch ({rows.stop - rows.start} "
                f"rows), got a leaf with {x.shape[0]} rows."
            )
        spec = PartitionSpec(*sharding.spec[:1], *([None] * (x.ndim - 1)))
        return jax.make_array_from_process_local_data(
            NamedSharding(sharding.mesh, spec), x, (global_size, *x.shape[1:])
        )

    return jax.tree.map(assemble, local)
