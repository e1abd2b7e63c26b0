"""Peak memory of streaming one job's CSV export, in a process of its own.

`python -m bench.export_probe JOB_ID` prints JSON: how far the process's peak resident size
rose above its resident size at the start while the whole export was consumed, the rows and
bytes produced and the seconds taken. Linux: reads /proc/self/status. Not ru_maxrss: Linux
keeps that across exec, so a child started by a big parent would report the parent's size.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # clear_refs: reset the peak resident size (VmHWM) to the current one


def memory_kb() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident size, in kB."""
    values = {}
    for line in STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    return values


def main(job_id: int) -> dict[str, float]:
    import django

    django.setup()
    from jobs.models import TrainingJob
    from metrics.export import export_csv_chunks

    job = TrainingJob.objects.get(pk=job_id)
    gc.collect()
    # Without the reset the peak may include start-up: then the figure is an upper bound.
    with contextlib.suppress(OSError):
        CLEAR_REFS.write_text(RESET_PEAK)
    before = memory_kb()
    started = time.perf_counter()
    size = lines = 0
    for chunk in export_csv_chunks(job):
        size += len(chunk.encode())
        lines += chunk.count("\n")
    seconds = time.perf_counter() - started
    after = memory_kb()
    return {
        "peak_mb": (after["VmHWM"] - before["VmRSS"]) / 1024,
        "process_peak_mb": after["VmHWM"] / 1024,
        "rows": lines - 1,  # the header
        "bytes": size,
        "seconds": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
