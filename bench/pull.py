"""Pull throughput: the controller pulling a model from the stand-in Hub, against `curl` fetching
the same file from the same stand-in, interleaved in one run.

For each of N runs: curl downloads the GGUF to a temp file (its own `%{speed_download}`, bytes
over its transfer time); the controller pulls the same repo (POST /api/v1/models/pull, timed from
the request until the job is done: planning, download, sha256, move into models_dir, database),
then the model is deleted for the next run. Two controller figures: its transfer (the job's own
speed: bytes over the time from its first request for the file to the last byte written and
hashed) and end to end (the file's size over the whole pull, fixed costs included). Ratio =
controller transfer MB/s / curl MB/s (goal >= 0.9).

The stand-in (tests/standins/hub.py, aiohttp) is the bottleneck for both: its rate is the
ceiling, so the ratio shows what the controller adds (hashing, writing, its job bookkeeping).

`--rate` caps the stand-in's sending rate (bytes/s), like a network link would: unthrottled on
a 2-core machine the Python stand-in takes a whole core and the controller (receiving, writing
and hashing at once) shares the other with it, while curl needs little CPU.

Usage: python bench/pull.py [--runs 5] [--rate 125000000] [--file data/models/gemma-3-270m-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import GEMMA3, running_controller, stand_in_hub


def curl(url: str, out: Path) -> float:
    """Bytes per second, as curl measured its own transfer."""
    result = subprocess.run(
        ["curl", "-sS", "-o", str(out), "-w", "%{speed_download}", url], capture_output=True, text=True, check=True
    )
    return float(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--file", type=Path, default=GEMMA3)
    parser.add_argument("--rate", type=float, default=0, help="stand-in bytes/s (0: as fast as it can)")
    args = parser.parse_args()
    size = args.file.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "repos" / "Bench" / "Model-GGUF"
        repo.mkdir(parents=True)
        (repo / args.file.name).symlink_to(args.file.resolve())
        with stand_in_hub(root / "repos", "--rate", str(args.rate)) as (hub, _):
            url = f"{hub}/Bench/Model-GGUF/resolve/main/{args.file.name}"
            curl(url, root / "warm.gguf")  # the stand-in hashes the file on first use
            config = {"models_config": {"scan_interval": 0}}
            with running_controller(root / "ctl", models=[], extra_env={"HF_ENDPOINT": hub}, **config) as ctl:
                source = f"Bench/Model-GGUF:{args.file.name}"
                curl_speeds, ours, whole = [], [], []
                with ctl.client() as client:
                    for _ in range(args.runs):
                        curl_speeds.append(curl(url, root / "curl.gguf"))
                        (root / "curl.gguf").unlink()
                        began = time.perf_counter()
                        job = client.post("/api/v1/models/pull", json={"source": source}).json()
                        while (done := client.get(f"/api/v1/jobs/{job['id']}").json())["state"] == "running":
                            time.sleep(0.05)
                        elapsed = time.perf_counter() - began
                        assert done["state"] == "done", done
                        ours.append(done["speed"])
                        whole.append(size / elapsed)
                        client.delete(f"/api/v1/models/{done['model_id']}")
    mib = 2**20
    c, o = statistics.median(curl_speeds), statistics.median(ours)
    link = f"at {args.rate * 8 / 1e9:.1f} Gbit/s" if args.rate else "unthrottled"
    print(f"\nPull of {args.file.name} ({size / mib:.0f} MiB) from the stand-in Hub {link}, {args.runs} runs\n")
    print("| client | median MiB/s | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| curl | {c / mib:.0f} | {min(curl_speeds) / mib:.0f} | {max(curl_speeds) / mib:.0f} |")
    print(f"| controller pull: transfer | {o / mib:.0f} | {min(ours) / mib:.0f} | {max(ours) / mib:.0f} |")
    w = statistics.median(whole)
    print(f"| controller pull: end to end | {w / mib:.0f} | {min(whole) / mib:.0f} | {max(whole) / mib:.0f} |")
    print(f"\nratio controller transfer / curl: {o / c:.2f} (goal >= 0.9); end to end / curl: {w / c:.2f}")


if __name__ == "__main__":
    main()
