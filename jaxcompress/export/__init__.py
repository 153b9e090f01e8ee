"""Export: compressed storage of weights (integer model and artifact to follow)."""

from jaxcompress.export.storage import decode_sparse, encode_sparse, load_arrays, save_arrays

__all__ = ["decode_sparse", "encode_sparse", "load_arrays", "save_arrays"]
