"""Timing shared by the Python benchmark scripts (imported from the scripts' folder)."""
import statistics
import time


def median_ms(fn, reps, warmup=1):
    """Median wall time of fn() in ms over reps runs, after warmup untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
