"""experiments/digits_label_efficiency.py announces each run and lets the run's own progress through (it used to
print nothing for the ~2 minutes of each of its 12 runs)."""

import importlib.util
import json
import subprocess
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
    experiment.main(["--pretrained", str(tmp_path / "mae"), "--seeds", "0", "1", "--fractions", "1.0",
                     "--work_dir", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert "[1/4] from scratch, 100% labels, seed 0 -> " in printed
    assert "[3/4] MAE-pretrained, 100% labels, seed 0 -> " in printed and "min left)" in printed
    assert "| MAE-pretrained | 90.0 ± 0.0 |" in printed
    for command, kwargs in calls:  # the run's banner and progress bar reach the terminal
        assert command[command.index("--disable_tqdm") + 1] == "false" and "stderr" not in kwargs
