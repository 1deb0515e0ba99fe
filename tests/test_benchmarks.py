"""The benchmark scripts run (smoke mode: tiny config, seconds) and print their summary."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pretrain_step_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pretrain_step.py"), "--smoke", "--threads", "1",
         "--rounds", "2", "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mae_hf / transformers train-step images/s:" in result.stdout
    assert "(|diff| 0.00e+00)" in result.stdout  # both models did the same work
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved and "ratio" in json.dumps(saved)


def test_input_pipeline_and_mean_iou_memory_benchmarks_smoke():
    for script, expected in (("bench_input_pipeline.py", "images/s per worker process"),
                             ("bench_mean_iou_memory.py", "stream")):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
                                capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        assert expected in result.stdout
