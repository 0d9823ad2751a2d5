"""The acceptance report and benchmarks: selfspec's decoder against what a user would pick instead.

``python decode/bench/run.py drafter=PATH`` (``run.py``) runs the report (``report.py``) over held-out prompts
(``prompts.py``) for every method (``methods.py``, measured alike by ``baselines.py``) and writes it
(``render.py``); ``oracle.py`` measures the decoder's own efficiency with a drafter that is always right.
"""
