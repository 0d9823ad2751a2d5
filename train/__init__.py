"""Training drafters against a frozen target with DeepSpeed, configured by Hydra."""
