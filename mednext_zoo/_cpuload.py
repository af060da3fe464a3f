"""Whether other processes compete for the CPU while something is timed: one rule for ``bench`` and ``export``."""
from __future__ import annotations

import os
from typing import Optional, Sequence

__all__ = ['load_average', 'usable_cores', 'busy']


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def busy(loads: Sequence[Optional[float]], cores: int) -> bool:
    """True when a load average (at start or end) exceeds half the usable cores: timings are then noisy."""
    values = [v for v in loads if v is not None]
    return bool(values) and max(values) > 0.5 * max(1, cores)
