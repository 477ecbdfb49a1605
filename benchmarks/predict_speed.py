"""Speed of ``resnet-ocp predict`` on this machine: images per second over a folder of CIFAR-10's
10,000 test images written as PNG files, and the latency of one image from a cold start (a fresh
process: interpreter, imports, model load, one prediction). Also checks the folder's top-1
accuracy against the labels. Appends its record to benchmarks/results.jsonl.

    python benchmarks/predict_speed.py --data ../shared/data/cifar10 --model results/sgd-24ep/export
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, positive_int


def write_test_pngs(data: Path, folder: Path) -> list[int]:
    """The test split's PNG files, byte for byte as the parquet set stores them, and their labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(next((data / "plain_text").glob("test-*.parquet")), columns=["img", "label"])
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(table.column("img").to_pylist()):
        path = folder / f"test_{i:05d}.png"
        if not path.exists():
            path.write_bytes(image["bytes"])
    return table.column("label").to_pylist()


def timed(command: list[str]) -> tuple[float, str, float]:
    """Wall seconds of a fresh process running ``command``, its stdout, and the CPU seconds it used
    (user + system, all threads: unlike wall time, hardly changed by other processes on the cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(command)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1]}")
    return seconds, proc.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Time a folder prediction and cold starts, and append the record to ``--results`` (options from ``sys.argv``)."""
    parser = OneLineParser(prog="benchmarks/predict_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 in the Hub's parquet layout")
    parser.add_argument("--model", default="results/sgd-24ep/export", help="MODEL as predict takes it")
    parser.add_argument("--png-dir", default="/tmp/cifar10-test-png", help="where the 10,000 PNG files are written")
    parser.add_argument("--cold-runs", type=positive_int, default=5, help="fresh processes for the one-image latency")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.jsonl")), help="JSON-lines file the record is appended to")
    args = parser.parse_args()
    folder = Path(args.png_dir)
    labels = write_test_pngs(Path(args.data), folder)
    predict = [sys.executable, "-m", "resnet_ocp.cli", "predict", args.model]
    from resnet_ocp.session import cpu_identity

    cpu = cpu_identity()
    record = {"benchmark": "predict_speed", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": args.model,
              "machine": f"{cpu['cpu_name']} ({cpu['cpu_capability']}), {os.cpu_count()} cpus", "python": platform.python_version(),
              "load_average_before": os.getloadavg()[0]}
    for tta in ("--tta", "--no-tta"):
        seconds, out, cpu = timed([*predict, str(folder), "--json", tta])
        result = json.loads(out)
        correct = sum(p["top"][0]["index"] == labels[int(Path(p["file"]).stem.split("_")[1])] for p in result["predictions"])
        key = tta.lstrip("-").replace("-", "_")
        record[f"folder_{key}"] = {"images": len(result["predictions"]), "seconds": seconds, "images_per_second": len(labels) / seconds,
                                   "cpu_seconds": cpu, "correct": correct, "precision": result["precision"], "device": result["device"]}
        print(f"folder of {len(labels)} PNGs, {tta}: {seconds:.1f} s, {len(labels) / seconds:.1f} img/s ({cpu:.0f} CPU seconds), "
              f"top-1 {correct}/{len(labels)}", flush=True)
    imports = timed([sys.executable, "-c", "import resnet_ocp.cli, resnet_ocp.predict"])[0]
    cold = [timed([*predict, str(folder / "test_00000.png")])[0] for _ in range(args.cold_runs)]
    record["cold_start_one_image_s"] = {"median": statistics.median(cold), "min": min(cold), "max": max(cold), "runs": cold,
                                        "of_which_imports_s": imports}
    print(f"one image from a cold start: median {statistics.median(cold):.2f} s (min {min(cold):.2f}, max {max(cold):.2f}, "
          f"{args.cold_runs} runs); interpreter and imports alone {imports:.2f} s", flush=True)
    # Another process on the same cores slows every figure: the load average says whether one ran.
    record["load_average_after"] = os.getloadavg()[0]
    append_json_line(args.results, {**record, "command": f"python benchmarks/predict_speed.py --data {args.data} --model {args.model}"})


if __name__ == "__main__":
    main()
