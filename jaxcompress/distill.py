"""Knowledge distillation: soft targets, hints and attention transfer from a teacher to a compressed student.

Plain losses (:func:`soft_target_loss`, :func:`hint_loss`,
:func:`attention_loss` over :func:`attention_maps`), :func:`capture` to record
a linen model's intermediate outputs without changing it, and
:func:`distillation`, one loss running teacher and student in the same step.
"""

from jaxcompress._src.distill import (
    attention_loss,
    attention_maps,
    capture,
    distillation,
    hint_loss,
    soft_target_loss,
)

__all__ = [
    "attention_loss",
    "attention_maps",
    "capture",
    "distillation",
    "hint_loss",
    "soft_target_loss",
]
