"""CPU benchmarks of tunelab: ``python -m bench [NAME ...] [--quick]``; results in ``bench/out/``.

Each benchmark times two ways of doing the same work side by side in one process, alternating
repetitions and excluding warm-up, and reports the ratio of their medians.
"""
