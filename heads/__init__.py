"""Drafter modules: Medusa, EAGLE, EAGLE-3 and a distilled draft model."""
