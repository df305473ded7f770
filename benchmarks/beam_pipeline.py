"""Throughput and peak memory of `python -m training.create_pretraining_data` (docs/data.md).

Runs the CLI as a child process and samples the resident memory of its whole process tree
(the launcher and Beam's worker processes) from /proc every 0.2 s.

  .venv/bin/python -m benchmarks.beam_pipeline --input=data/large/*.txt --output_dir=/tmp/shards
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def _tree_rss(root_pid):
    """(sum, max) resident MiB over `root_pid` and its descendants."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    stack, rss = [root_pid], []
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            rss.append(kb / 1024)
        except (OSError, StopIteration):
            continue
    return sum(rss), max(rss, default=0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--extra", default="", help="more CLI flags, space-separated")
    args = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "training.create_pretraining_data", f"--input={args.input}",
           f"--output_dir={args.output_dir}", *args.extra.split()]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_sum = peak_one = 0.0
    while proc.poll() is None:
        total, one = _tree_rss(proc.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, one)
        time.sleep(0.2)
    seconds = time.monotonic() - start
    stderr = proc.stderr.read()
    if proc.returncode:
        print(stderr[-3000:], file=sys.stderr)
        return proc.returncode
    with open(os.path.join(args.output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    documents = manifest["documents"]
    input_mb = sum(i["bytes"] for i in manifest["inputs"]) / 2**20
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
        "input_mb": round(input_mb, 1), "seconds": round(seconds, 1),
        "documents": documents, "examples": manifest["examples"],
        "documents_per_s": round(documents / seconds, 1),
        "examples_per_s": round(manifest["examples"] / seconds, 1),
        "mb_per_s": round(input_mb / seconds, 3),
        "minutes_per_gb": round(seconds / 60 * 1024 / input_mb, 1),
        "peak_rss_tree_mib": round(peak_sum), "peak_rss_one_process_mib": round(peak_one),
        "settings": manifest["settings"], "shards": len(manifest["shards"]),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
