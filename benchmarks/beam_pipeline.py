"""Throughput and peak memory of `python -m training.create_pretraining_data` (docs/data.md).

Runs the CLI as a child process and samples the resident memory and CPU time of its whole
process tree (the launcher and Beam's worker processes) from /proc every 0.2 s; CPU seconds
say what the run costs when other jobs share the cores.

  .venv/bin/python -m benchmarks.beam_pipeline --input=data/large/*.txt --output_dir=/tmp/shards
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def _tree(root_pid):
    """{pid: (resident MiB, CPU seconds)} of `root_pid` and its descendants."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    stack, out = [root_pid], {}
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = (kb / 1024, (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--extra", default="", help="more CLI flags, space-separated")
    args = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "training.create_pretraining_data", f"--input={args.input}",
           f"--output_dir={args.output_dir}", *args.extra.split()]
    start = time.monotonic()
    log = tempfile.TemporaryFile("w+")  # A pipe would fill up and stall the run.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    peak_sum = peak_one = 0.0
    cpu = {}  # Last CPU seconds seen per process (processes may end before the run).
    while proc.poll() is None:
        tree = _tree(proc.pid)
        rss = [r for r, _ in tree.values()]
        peak_sum, peak_one = max(peak_sum, sum(rss)), max([peak_one, *rss])
        cpu.update({pid: c for pid, (_, c) in tree.items()})
        time.sleep(0.2)
    cpu_seconds = sum(cpu.values())
    seconds = time.monotonic() - start
    log.seek(0)
    stderr = log.read()
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
        "cpu_seconds": round(cpu_seconds, 1),
        "cpu_minutes_per_gb": round(cpu_seconds / 60 * 1024 / input_mb, 1),
        "documents_per_cpu_s": round(documents / cpu_seconds, 1),
        "examples_per_cpu_s": round(manifest["examples"] / cpu_seconds, 1),
        "peak_rss_tree_mib": round(peak_sum), "peak_rss_one_process_mib": round(peak_one),
        "settings": manifest["settings"], "shards": len(manifest["shards"]),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
