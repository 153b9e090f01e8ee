"""Training checkpoints with orbax: async atomic saves, keep the last k, resume onto any mesh.

:class:`Checkpoints` wraps ``orbax.checkpoint.CheckpointManager``. A
checkpoint holds one pytree (params, the optimizer state with the compression
state inside it, PRNG keys: whatever the loop needs) and a small JSON record
(the step, the data position, the tree's leaf shapes and dtypes). Orbax
writes each checkpoint into a temporary directory and renames it when every
process has finished, so a process killed mid-save leaves no checkpoint
behind, only a temporary directory that the next save ignores.

On restore the newest readable checkpoint is used: one that fails to read
(truncated or damaged files, a record that does not match the tree) is
skipped with a :class:`CheckpointSkipped` warning naming it and the error,
renamed to ``<step>.unreadable`` (kept, never deleted, so the step can be
saved again), and the one before it is tried.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["CheckpointSkipped", "Checkpoints", "Restored"]

_STATE, _RECORD = "state", "record"


class CheckpointSkipped(UserWarning):
    """A checkpoint could not be restored and was skipped for an older one."""


class Restored(NamedTuple):
    """What :meth:`Checkpoints.restore` returns."""

    step: int
    state: Any  # the saved tree, placed with the shardings of ``like``
    data_position: Any  # what was saved as ``data_position`` (JSON-serializable), or None


class Checkpoints:
    """Orbax checkpoints of a training state (module docstring).

    Args:
      directory: where checkpoints live (one subdirectory per step). Created
        if absent; must be shared by every process of a multi-host run.
      keep: how many of the newest checkpoints to keep (older ones are deleted).
      every: save only on steps that are multiples of ``every`` (``save(...,
        force=True)`` saves anyway).
      async_save: write in a background thread; :meth:`save` blocks only to
        copy the arrays off the devices. :meth:`wait` (or :meth:`close`, or
        leaving the ``with`` block) blocks until the writes are finished.

    Example:
      >>> import tempfile, jax.numpy as jnp, jaxcompress as jc
      >>> state = {"params": {"w": jnp.ones(3)}, "step": jnp.int32(0)}
      >>> with jc.train.Checkpoints(tempfile.mkdtemp()) as ckpt:
      ...     ckpt.save(10, state, data_position=1280)
      ...     ckpt.wait()
      ...     restored = ckpt.restore(state)
      True
      >>> restored.step, restored.data_position
      (10, 1280)
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 1, async_save: bool = True):
        for name, value in (("keep", keep), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        self.directory, self.every = pathlib.Path(directory).absolute(), every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # what a killed save left behind
        )
        handlers = {
            _STATE: ocp.PyTreeCheckpointHandler(type_handler_registry=_registry()),
            _RECORD: ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    @property
    def steps(self) -> list[int]:
        """The steps of the finished checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, *, data_position: Any = None, force: bool = False) -> bool:
        """Starts saving ``state`` as checkpoint ``step``; returns whether it saves (``every``, ``force``).

        ``data_position`` is any JSON-serializable value that tells the input
        pipeline where to resume (an example index, an epoch and offset).
        Typed PRNG keys (``jax.random.key``) are stored as their key data.
        """
        step = _check_step(step)
        if step % self.every and not force:
            return False
        record = {"step": step, "data_position": data_position, "leaves": _signature(state)}
        args = ocp.args.Composite(**{_STATE: ocp.args.PyTreeSave(_key_data(state)), _RECORD: ocp.args.JsonSave(record)})
        return bool(self._manager.save(step, args=args, force=force))

    def restore(self, like: Any, *, step: int | None = None) -> Restored | None:
        """The newest readable checkpoint (or ``step``), placed like ``like``; None if there is none.

        Args:
          like: a tree with the saved tree's structure: arrays, or
            ``jax.ShapeDtypeStruct`` (``jax.eval_shape``'s output with
            shardings), whose shardings say where each restored leaf goes;
            a different mesh than at save time reshards.
          step: restore this step; a ``ValueError`` if it is absent or unreadable.
        """
        self._manager.wait_until_finished()
        candidates = [_check_step(step)] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if step is not None and step not in self._manager.all_steps():
            raise ValueError(f"`step` {step} has no checkpoint in {self.directory}; found steps {self.steps}.")
        for i, s in enumerate(candidates):
            try:
                record = self._manager.restore(s, args=ocp.args.Composite(**{_RECORD: ocp.args.JsonRestore()}))
                record = record[_RECORD]
                if not isinstance(record, dict) or record.get("step") != s or "leaves" not in record:
                    raise ValueError(
                        f"its record names step {record.get('step') if isinstance(record, dict) else None}"
                    )
            except Exception as error:  # any failure to read means this checkpoint is unusable
                self._skip(s, error, candidates[i + 1 :], explicit=step is not None)
                continue
            _check_matches(record["leaves"], like, s, self.directory)  # the caller's tree: an error, not damage
            target = jax.tree.map(_abstract, _key_data(like))
            try:
                state = self._manager.restore(s, args=ocp.args.Composite(**{_STATE: _restore_args(target)}))
            except Exception as error:
                self._skip(s, error, candidates[i + 1 :], explicit=step is not None)
                continue
            return Restored(s, _wrap_keys(state[_STATE], like), record.get("data_position"))
        return None

    def _skip(self, step: int, error: Exception, older: list[int], *, explicit: bool) -> None:
        if explicit:
            raise ValueError(f"Checkpoint {step} in {self.directory} cannot be restored: {error}") from error
        moved = self._set_aside(step)
        warnings.warn(
            f"Skipping checkpoint {step} in {self.directory}: it cannot be restored "
            f"({type(error).__name__}: {_first_line(error)}); moved to {moved.name}; "
            f"{f'trying step {older[0]}' if older else 'no older checkpoint left'}.",
            CheckpointSkipped,
            stacklevel=3,
        )

    def _set_aside(self, step: int) -> pathlib.Path:
        """Renames an unreadable checkpoint (kept for inspection) so that training can save that step again."""
        source = self.directory / str(step)
        target = self.directory / f"{step}.unreadable"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}.unreadable-{n}"
        if jax.process_index() == 0 and source.exists():
            source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxcompress checkpoint {step} set aside")
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until every started save is written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the saves and releases the manager's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _registry():
    """Orbax's handlers, but a replicated array smaller than _MIN_SPLIT_BYTES is saved whole by one replica.

    Orbax splits every replicated array across its replicas by default, one eager slice each: for a model's
    many small replicated leaves (biases, counters, masks of unsharded kernels) that is most of a save's
    blocking time.
    """
    th = ocp.type_handlers
    return th.create_type_handler_registry(
        (int, th.ScalarHandler()),
        (float, th.ScalarHandler()),
        (bytes, th.ScalarHandler()),
        (np.number, th.ScalarHandler()),
        (np.ndarray, th.NumpyHandler()),
        (jax.Array, th.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_SPLIT_BYTES)),
        (str, th.StringHandler()),
    )


_MIN_SPLIT_BYTES = 1 << 22


def _restore_args(target: Any) -> Any:
    restore = jax.tree.map(
        lambda x: (
            ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
            if x.sharding is not None
            else ocp.RestoreArgs()
        ),
        target,
    )
    return ocp.args.PyTreeRestore(item=target, restore_args=restore)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"`step` must be a non-negative int, got {step!r}.")
    return int(step)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _wrap_keys(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like
    )


def _signature(tree: Any) -> list[list]:
    """``[path, shape, dtype]`` of every leaf: what a checkpoint's record must match."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(jnp.result_type(x))] for p, x in leaves]


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=sharding)


def _check_matches(saved: Any, like: Any, step: int, directory: pathlib.Path) -> None:
    expected = _signature(like)
    if saved != expected:
        diff = [(a, b) for a, b in zip(saved, expected, strict=False) if a != b][:3]
        raise ValueError(
            f"`like` does not match checkpoint {step} in {directory}: it saved {len(saved)} leaves, `like` has "
            f"{len(expected)}; first differences (saved, like): {diff}. Pass the tree of the run that saved it "
            f"(same model, optimizer and recipe)."
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
