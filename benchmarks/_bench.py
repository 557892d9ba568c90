"""What every benchmark prints about where it ran: the machine, the versions, the load."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path


def machine_lines() -> list[str]:
    """The machine (platform, CPU model, CPUs, memory) and the versions that matter."""
    import dask
    import distributed
    import numpy as np
    import pandas as pd
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in
                   Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    return [f"machine: {platform.platform()}; {cpu}; {os.cpu_count()} CPUs; "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB memory",
            f"versions: Python {platform.python_version()}, numpy {np.__version__}, "
            f"pandas {pd.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}"]


def closing_lines(load_start: tuple, started: float) -> list[str]:
    """The machine, the load average at the start and now (the machine may be shared), the
    command and the whole run's time."""
    import time

    load_end = os.getloadavg()
    return machine_lines() + [
        f"load average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}; end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}",
        f"command: {' '.join([Path(sys.executable).name] + sys.argv)}",
        f"whole run: {time.perf_counter() - started:.0f} s"]
