"""Reliability and security proofs (issue 7): fault, load and hostile-input scenarios.

Each scenario module exposes ``run(profile, workdir) -> Report``; ``profile`` is "quick" (the
bounded run CI does through the test_*.py files here) or "full" (scripts/bench_reliability.py).
"""
