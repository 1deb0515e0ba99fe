"""The README's experiment commands: experiments/digits_label_efficiency.py announces each run and lets the run's
own progress through (it used to print nothing for the ~2 minutes of each of its 12 runs);
experiments/digits_seg_label_efficiency.py runs end to end in its tiny mode (seconds): the same code path as the
long runs, on tiny models and a few canvases."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_experiment():
    path = ROOT / "experiments" / "digits_label_efficiency.py"
    spec = importlib.util.spec_from_file_location("digits_label_efficiency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_efficiency_experiment_shows_progress(tmp_path, monkeypatch, capsys):
    experiment = load_experiment()
    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "config.json").write_text("{}")
    calls = []

    def fake_run(command, **kwargs):  # a fine-tuning run that scores 0.9
        calls.append((command, kwargs))
        out = Path(command[command.index("--output_dir") + 1])
        out.mkdir(parents=True)
        (out / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))

    monkeypatch.setattr(subprocess, "run", fake_run)
    experiment.main(
        [
            "--pretrained",
            str(tmp_path / "mae"),
            "--seeds",
            "0",
            "1",
            "--fractions",
            "1.0",
            "--work_dir",
            str(tmp_path / "work"),
        ]
    )
    printed = capsys.readouterr().out
    assert "[1/4] from scratch, 100% labels, seed 0 -> " in printed
    assert "[3/4] MAE-pretrained, 100% labels, seed 0 -> " in printed and "min left)" in printed
    assert "| MAE-pretrained | 90.0 ± 0.0 |" in printed
    for command, kwargs in calls:  # the run's banner and progress bar reach the terminal
        assert command[command.index("--disable_tqdm") + 1] == "false" and "stderr" not in kwargs


def test_digits_seg_label_efficiency_tiny(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "digits_seg_label_efficiency.py"),
            "--tiny",
            "--seeds",
            "0",
            "1",
            "--workers",
            "2",
            "--work_dir",
            str(tmp_path),
            "--steps",
            "2",
            "--eval_steps",
            "1",
            "--full_steps",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| encoder | 80 labelled canvases (10 %), mIoU | 800 labelled canvases (100 %), mIoU |" in out
    assert "| random init | " in out and "| MAE | " in out and "IoU per class" in out
    assert "| run | 1 | 2 |\n" in out and "| run | 1 | 2 | 3 |\n" in out  # the learning curves, 80 and 800 canvases
    assert "| mae_800_seed0 | " in out and "| scratch_80_seed1 | " in out
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = {arm: {n: len(r) for n, r in by_n.items()} for arm, by_n in saved["results"].items()}
    assert runs == {"random init": {"80": 2, "800": 1}, "MAE": {"80": 2, "800": 1}}
    assert (tmp_path / "pretrain" / "config.json").is_file()  # --tiny: the figures go to the work dir, not docs/
    assert (tmp_path / "digits_seg_mae_overlay.png").is_file() and (
        tmp_path / "digits_seg_learning_curves.png"
    ).is_file()
    assert [step for step, _ in saved["results"]["MAE"]["80"][1]["curve"]] == [1, 2]
    assert [step for step, _ in saved["results"]["MAE"]["800"][0]["curve"]] == [1, 2, 3]  # --full_steps
    mae = json.loads((tmp_path / "mae_800_seed0" / "config.json").read_text())
    assert mae["model_type"] == "mae_upernet"
