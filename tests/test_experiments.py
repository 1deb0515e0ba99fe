"""The README's experiment commands run end to end in their tiny mode (seconds): the same code path as the long
runs, on tiny models and a few canvases."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_digits_seg_label_efficiency_tiny(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "digits_seg_label_efficiency.py"), "--tiny", "--seeds", "0", "1",
         "--threads", "1", "--work_dir", str(tmp_path), "--steps", "2", "--eval_steps", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| encoder | 80 labelled canvases (10 %), mIoU | 800 labelled canvases (100 %), mIoU |" in out
    assert "| random init | " in out and "| MAE | " in out and "IoU per class" in out
    assert "| run | 1 | 2 |" in out and "| mae_800_seed0 | " in out  # the learning curves (--eval_steps)
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = {arm: {n: len(r) for n, r in by_n.items()} for arm, by_n in saved["results"].items()}
    assert runs == {"random init": {"80": 2, "800": 1}, "MAE": {"80": 2, "800": 1}}
    assert (tmp_path / "segmentation_mae.png").is_file() and (tmp_path / "pretrain" / "config.json").is_file()
    mae = json.loads((tmp_path / "mae_800_seed0" / "config.json").read_text())
    assert mae["model_type"] == "mae_upernet"
