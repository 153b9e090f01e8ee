"""Training helpers: jitted classifier steps, evaluation, a fit loop."""

from jaxcompress._src.train import accuracy, cross_entropy, fit, make_train_step

__all__ = ["accuracy", "cross_entropy", "fit", "make_train_step"]
