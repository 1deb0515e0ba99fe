"""The benchmark scripts run (smoke mode: tiny config, seconds) and print their summary."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pretrain_step_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_pretrain_step.py"),
            "--smoke",
            "--threads",
            "1",
            "--rounds",
            "2",
            "--json",
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mae_hf / transformers train-step images/s:" in result.stdout
    assert "(|diff| 0.00e+00)" in result.stdout  # both models did the same work
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved and "ratio" in json.dumps(saved)


def run_smoke(script: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_input_pipeline_benchmark_smoke_compares_plain_and_ours():
    out = run_smoke("bench_input_pipeline.py")
    assert "| plain: PIL decode + torchvision v2 on PIL |" in out and "| ours: " in out
    assert re.search(r"input pipeline: ours \d+\.\d\dx the plain pipeline's images/s per worker", out)


def test_mean_iou_memory_benchmark_smoke():
    assert "stream" in run_smoke("bench_mean_iou_memory.py")


def test_task_step_benchmarks_smoke():
    classification = run_smoke("bench_task_step.py", "--task", "classification")
    assert "| mae_hf |" in classification and "| transformers ViT |" in classification
    assert re.search(r"classification step: mae_hf \d+\.\d\dx transformers' images/s", classification)
    segmentation = run_smoke("bench_task_step.py", "--task", "segmentation")
    assert re.search(r"segmentation step: mae_hf [\d.]+ images/s, MFU [\d.]+%", segmentation)


def test_threads_benchmark_smoke():
    out = run_smoke("bench_threads.py")
    assert re.search(r"threads 2: median \d+ images/s, [\d.]+x the speed at 1 thread\(s\)", out)
    assert "load average before" in out


def test_checksums_benchmark_smoke():
    out = run_smoke("bench_checksums.py")
    assert "| xxh3_128 (one thread) |" in out and "| sha256 (one thread) |" in out
    assert re.search(r"checksums at [\d.]+ GB: \+[\d.]+ s per save \([\d.]+ s/GB", out)
