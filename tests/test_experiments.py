"""The README's experiment commands: experiments/digits_label_efficiency.py announces each run and lets the run's
own progress through (it used to print nothing for the ~2 minutes of each of its 12 runs);
experiments/digits_seg_label_efficiency.py (`make demo-seg`) and experiments/digits_seg_pretraining_budget.py run
end to end in their tiny modes (seconds): the same code paths as the long runs, on tiny models and a few canvases;
the budget experiment skips the runs a previous start recorded."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str = "digits_label_efficiency"):
    path = ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
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


def run_experiment(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_digits_seg_label_efficiency_tiny(tmp_path):
    args = ["--labelled", "80", "800", "--seeds", "0", "1", "--workers", "2", "--work_dir", str(tmp_path)]
    out = run_experiment("digits_seg_label_efficiency.py", *args, "--steps", "2", "--eval_steps", "1").stdout
    assert "| encoder | 80 labelled canvases (10 %), mIoU | 800 labelled canvases (100 %), mIoU |" in out
    assert "| random init | " in out and "| MAE | " in out and "IoU per class" in out
    assert out.count("| run | 1 | 2 |\n") == 2  # the learning curves, 80 and 800 canvases
    assert "| mae_800_seed0 | " in out and "| scratch_80_seed1 | " in out
    assert "MAE, 800 labelled canvases, seed 0: mIoU " in out and "random init, 800 labelled canvases" in out
    assert "targets (mIoU >= 60, every digit >= 40) MISSED" in out  # 2 steps of a tiny model
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = {arm: {n: len(r) for n, r in by_n.items()} for arm, by_n in saved["results"].items()}
    assert runs == {"random init": {"80": 2, "800": 1}, "MAE": {"80": 2, "800": 1}}
    assert saved["pretraining"]["steps"] == 1 and saved["pretraining"]["cpu_seconds"] > 0
    assert (tmp_path / "pretrain" / "config.json").is_file()  # --tiny: the figures go to the work dir, not docs/
    for figure in ("mae_overlay", "scratch_overlay", "learning_curves"):
        assert (tmp_path / f"digits_seg_{figure}.png").is_file()
    assert [step for step, _ in saved["results"]["MAE"]["80"][1]["curve"]] == [1, 2]
    mae = json.loads((tmp_path / "mae_800_seed0" / "config.json").read_text())
    assert mae["model_type"] == "mae_upernet"


def test_demo_targets_name_the_lowest_digit():
    experiment = load_experiment("digits_seg_label_efficiency")
    per_class = {"background": 99.0, **{str(d): 70.0 for d in range(10)}}

    def run(mean_iou, lowest):
        return {"mean_iou": mean_iou, "per_class_iou": {**per_class, "9": lowest}}

    results = {"random init": {800: [run(65.0, 39.9)]}, "MAE": {800: [run(60.0, 40.0)]}}
    assert experiment.targets(results, [0]).splitlines() == [
        "random init, 800 labelled canvases, seed 0: mIoU 65.0, lowest digit 9 39.9 -> targets (mIoU >= 60, "
        "every digit >= 40) MISSED",
        "MAE, 800 labelled canvases, seed 0: mIoU 60.0, lowest digit 9 40.0 -> targets (mIoU >= 60, every digit "
        ">= 40) met",
    ]


def test_digits_seg_pretraining_budget_tiny_resumes(tmp_path):
    args = ["--epochs", "1", "2", "--seeds", "0", "1", "--steps", "2", "--work_dir", str(tmp_path)]
    out = run_experiment("digits_seg_pretraining_budget.py", *args).stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {name: r["steps"] for name, r in saved["pretraining"].items()} == {"mae1ep": 1, "mae2ep": 2}
    assert set(saved["probes"]) == {"mae1ep", "mae2ep", "random init"}
    assert len(saved["probes"]["random init"]["probe"]) == 1  # one block in the tiny model
    assert set(saved["finetunes"]) == {
        f"{arm}_80_seed{seed}" for arm in ("scratch", "mae1ep", "mae2ep") for seed in (0, 1)
    }
    assert "| pretraining | steps | probe per block (%, 0) | MAE mIoU (seeds 0, 1) | random init mIoU |" in out
    assert "| 1 epochs | 1 | " in out and "| 2 epochs | 2 | " in out
    gains = [
        saved["finetunes"][f"mae2ep_80_seed{seed}"]["mean_iou"]
        - saved["finetunes"][f"scratch_80_seed{seed}"]["mean_iou"]
        for seed in (0, 1)
    ]
    assert f"({gains[0]:+.1f}, {gains[1]:+.1f}) |" in out  # the gain per seed: MAE seed s - random init seed s
    assert (tmp_path / "digits_seg_pretraining_budget.png").is_file()
    assert (tmp_path / "mae2ep_80_seed1" / "config.json").is_file()
    again = run_experiment("digits_seg_pretraining_budget.py", *args).stdout  # a second start runs nothing again
    assert again.count("already recorded, skipped") == 2 + 3 + 6 and "running" not in again
    assert json.loads((tmp_path / "results.json").read_text()) == saved
