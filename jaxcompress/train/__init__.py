"""Training helpers: jitted classifier steps, evaluation, a fit loop."""

from jaxcompress.train.classifier import accuracy, cross_entropy, fit, make_train_step

__all__ = ["accuracy", "cross_entropy", "fit", "make_train_step"]
