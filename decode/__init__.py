"""Lossless speculative decoding with selfspec drafters, and its acceptance report."""
