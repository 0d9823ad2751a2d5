"""Lossless speculative decoding with selfspec drafters, and its acceptance report.

from selfspec.decode import SpeculativeDecoder
dec = SpeculativeDecoder.from_pretrained("outputs/eagle/drafter")
res = dec.generate(input_ids, max_new_tokens=128)
res.sequences, res.stats.mean_accepted_tokens
"""

from selfspec.decode.decoder import DecodeStats, GenerateResult, SpeculativeDecoder
from selfspec.decode.tree import COMPACT_CHOICES, DEFAULT_CHOICES, DraftTree

__all__ = [
    "COMPACT_CHOICES",
    "DEFAULT_CHOICES",
    "DecodeStats",
    "DraftTree",
    "GenerateResult",
    "SpeculativeDecoder",
]
