"""Helpers shared by the benchmarks in bench/."""


def percentile(values, p):
    """The p-th percentile of `values` (nearest rank; p in 0..100)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
