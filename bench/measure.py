"""What the benchmarks measure with: Lime calls as the stand-in counted them, and
percentiles."""

from __future__ import annotations

from sandbox.stack import Stack


def lime_calls(stack: Stack) -> int:
    """API calls the Lime stand-in answered, but for metadata reads (start-up checks)."""
    return sum(n for k, n in stack.lime.faults.stats()["requests"].items() if not k.startswith("GET limetype"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
