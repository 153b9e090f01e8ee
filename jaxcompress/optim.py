"""The optax wrapper that keeps compression invariants during fine-tuning."""

from jaxcompress._src.optim import WithCompressionState, compression_state, value_and_grad, with_compression

__all__ = ["WithCompressionState", "compression_state", "value_and_grad", "with_compression"]
