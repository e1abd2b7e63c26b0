"""Peak memory of streaming one job's CSV export, in a process of its own.

`python -m bench.export_probe JOB_ID` prints JSON: how far the process's peak RSS rose above
its resident size at the start while the whole export was consumed, the rows and bytes
produced and the seconds taken (Linux: reads /proc/self/status).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time


def main(job_id: int) -> dict[str, float]:
    import django

    django.setup()
    from jobs.models import TrainingJob
    from metrics.export import export_csv_chunks

    job = TrainingJob.objects.get(pk=job_id)
    gc.collect()
    before_kb = _current_rss_kb()
    started = time.perf_counter()
    size = lines = 0
    for chunk in export_csv_chunks(job):
        size += len(chunk.encode())
        lines += chunk.count("\n")
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_mb": (peak_kb - before_kb) / 1024,
        "process_peak_mb": peak_kb / 1024,
        "rows": lines - 1,  # the header
        "bytes": size,
        "seconds": seconds,
    }


def _current_rss_kb() -> int:
    # ru_maxrss is the peak so far (start-up included); the export's growth is measured
    # from the resident size right before it starts.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
