"""The main job: joint pruning + int8 on the embedded digits, exported and reloaded (``jaxcompress demo``)."""

from jaxcompress._src.demo import DemoConfig, DemoResult, run

__all__ = ["DemoConfig", "DemoResult", "run"]
