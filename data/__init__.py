"""Self-distillation data: the target writes its own training set (prompts too, if asked)."""
