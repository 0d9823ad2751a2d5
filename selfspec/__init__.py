"""selfspec: drafters trained on a target model's own outputs, and lossless speculative decoding with them.

The code lives in four subpackages that mirror the pipeline: ``selfspec.data`` (the target writes its
training set), ``selfspec.heads`` (drafter modules), ``selfspec.train`` (DeepSpeed training under Hydra) and
``selfspec.decode`` (speculative decoding and its report). This root package holds what all of them share:
loading targets (``selfspec.target``), devices and small file utilities (``selfspec.utils``).
"""

from selfspec.target import EMBEDDED_TARGET, TINY_TARGET, TargetError, load_target

__version__ = "0.1.0"

__all__ = ["EMBEDDED_TARGET", "TINY_TARGET", "TargetError", "load_target", "__version__"]
