"""Crash-safe checkpoints: completeness checks, ordered publishing, rotation, and SIGKILL injected at every file
write, rename and deletion of a checkpoint save and of the final model save, each followed by a resume with
`latest` that must end on the uninterrupted run's weights."""

import builtins
import gc
import json
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from helpers import PRETRAIN_TINY as TINY
from safetensors.torch import load_file, save_file
from transformers import modeling_utils

import run_pretraining
from mae_hf import MAEForPreTraining
from mae_hf.data import loading
from mae_hf.run_directory import checkpoints, files
from mae_hf.run_directory.checkpoints import rotate_checkpoints
from mae_hf.run_directory.files import folder_problems, publish_files, write_manifest
from mae_hf.run_directory.resume import checkpoint_step, newest_complete_checkpoint


def fake_checkpoint(folder, identity=None, step=1, with_manifest=True):
    os.makedirs(folder)
    save_file({"w": torch.arange(6.0)}, os.path.join(folder, "model.safetensors"))
    torch.save({"state": {}}, os.path.join(folder, "optimizer.pt"))
    for name in ("config.json", "trainer_state.json"):
        with open(os.path.join(folder, name), "w") as file:
            json.dump({"global_step": step}, file)
    if with_manifest:
        write_manifest(folder, identity, step, files.file_sizes(folder))
    return folder


def truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(int(size * keep))


def test_folder_problems_names_missing_short_and_unreadable_files(tmp_path):
    folder = fake_checkpoint(str(tmp_path / "checkpoint-1"))
    assert folder_problems(folder) == []
    truncate(os.path.join(folder, "optimizer.pt"))
    os.remove(os.path.join(folder, "trainer_state.json"))
    problems = folder_problems(folder)
    assert any(p.startswith("optimizer.pt has") and "bytes, not" in p for p in problems)
    assert "trainer_state.json is missing" in problems
    # Without a manifest (plain transformers): what Trainer needs, and every file must read back.
    plain = fake_checkpoint(str(tmp_path / "checkpoint-2"), with_manifest=False)
    assert folder_problems(plain) == []
    truncate(os.path.join(plain, "model.safetensors"), 0.9)
    truncate(os.path.join(plain, "optimizer.pt"), 0.9)
    problems = folder_problems(plain)
    assert any(p.startswith("model.safetensors is truncated") for p in problems)
    assert any(p.startswith("optimizer.pt cannot be read (BadZipFile") for p in problems)


def test_publish_files_moves_config_last_and_removes_the_old_one_first(tmp_path, monkeypatch):
    out, staged = tmp_path / "out", tmp_path / "out" / ".tmp-model"
    staged.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (staged / name).write_text("new")
    (out / "config.json").write_text("old")
    (out / "model-00001-of-00002.safetensors").write_text("old shard")
    seen = []
    replace = os.replace

    def spy(source, target):
        seen.append((os.path.basename(target), (out / "config.json").exists()))
        replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    publish_files(str(staged), str(out))
    assert [name for name, _ in seen][-1] == "config.json"
    assert not any(config_present for _, config_present in seen)  # no mix of an old config with new weights
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_rotation_counts_only_complete_checkpoints_of_this_run(tmp_path):
    ours, theirs = {"seed": 0}, {"seed": 1}
    fake_checkpoint(str(tmp_path / "checkpoint-1"), ours, 1)
    fake_checkpoint(str(tmp_path / "checkpoint-2"), ours, 2)
    truncate(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    fake_checkpoint(str(tmp_path / "checkpoint-3"), theirs, 3)

    def belongs(path):
        return (files.read_manifest(path) or {}).get("run_identity") == ours

    assert rotate_checkpoints(str(tmp_path), 1, belongs) == []  # checkpoint-1 is the only complete one of ours
    fake_checkpoint(str(tmp_path / "checkpoint-4"), ours, 4)
    assert rotate_checkpoints(str(tmp_path), 1, belongs) == [str(tmp_path / "checkpoint-1")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]


# ---------------------------------------------------------------------------------------------------- kills

builtins_open = builtins.open
RUN = [
    "--dataset_name",
    "digits",
    "--max_steps",
    "6",
    "--save_strategy",
    "steps",
    "--save_steps",
    "2",
    "--save_total_limit",
    "1",
    "--eval_strategy",
    "no",
    "--do_eval",
    "false",
    *TINY,
]


class Killer:
    """Counts the file events under `root` (each write: torch.save, safetensors, open for writing; each mkdir,
    rename and tree deletion) and SIGKILLs the process at event number `target`, after doing half of it: a half
    file, the folder made, the rename not done, half of the tree deleted."""

    def __init__(self, root: str, target: int | None, record: str | None = None):
        self.root, self.target, self.record, self.count = os.path.abspath(root), target, record, 0

    def event(self, kind: str, path, half) -> None:
        path = os.path.abspath(os.fspath(path))
        if path != self.root and not path.startswith(self.root + os.sep):
            return
        if self.record:
            with builtins_open(self.record, "a") as file:
                file.write(f"{kind} {os.path.relpath(path, self.root)}\n")
        if self.count == self.target:
            half()
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1

    def install(self) -> None:
        save, safe_save, makedirs, rename, replace, rmtree = (
            torch.save,
            modeling_utils.safe_save_file,
            os.makedirs,
            os.rename,
            os.replace,
            shutil.rmtree,
        )

        def half_file(writer, path):
            def run():
                writer()
                truncate(path)

            return run

        def torch_save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                self.event("write", f, half_file(lambda: save(obj, f, *args, **kwargs), f))
            return save(obj, f, *args, **kwargs)

        def safetensors_save(tensors, filename, *args, **kwargs):
            self.event("write", filename, half_file(lambda: safe_save(tensors, filename, *args, **kwargs), filename))
            return safe_save(tensors, filename, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax"):
                self.event("write", file, lambda: builtins_open(file, mode).close())
            return builtins_open(file, mode, *args, **kwargs)

        def makedirs_(name, *args, **kwargs):
            if not os.path.isdir(name):
                self.event("mkdir", name, lambda: makedirs(name, *args, **kwargs))
            return makedirs(name, *args, **kwargs)

        def renamer(original):
            def rename_(source, target, *args, **kwargs):
                self.event("rename", target, lambda: None)
                return original(source, target, *args, **kwargs)

            return rename_

        def rmtree_(path, *args, **kwargs):
            def half():
                paths = sorted(os.path.join(r, f) for r, _d, fs in os.walk(path) for f in fs)
                for name in paths[: len(paths) // 2]:
                    os.remove(name)

            if os.path.exists(path):
                self.event("rmtree", path, half)
            return rmtree(path, *args, **kwargs)

        torch.save, modeling_utils.safe_save_file, builtins.open = torch_save, safetensors_save, open_
        os.makedirs, os.rename, os.replace, shutil.rmtree = makedirs_, renamer(rename), renamer(replace), rmtree_


def _child(out: str, argv: list[str], target: int | None, record: str | None) -> None:
    _one_thread()
    try:
        Killer(out, target, record).install()
        run_pretraining.main(["--output_dir", out, *argv])
    except BaseException:  # noqa: BLE001 - reported through the exit code, the traceback on stderr
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _one_thread() -> None:
    """A forked process must not enter the OpenMP pool its parent started: GNU libgomp does not rebuild it after
    fork, and the child waits on threads that do not exist (seen as a CI hang once earlier tests had run torch ops
    on 2 threads). With one thread torch never enters an OpenMP region; DataLoader workers do the same."""
    torch.set_num_threads(1)


def _in_child(out, argv, target=None, record=None) -> int:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(str(out), argv, target, record))
    process.start()
    process.join()
    return process.exitcode


def _kill_and_resume(out: str, target: int) -> dict:
    """One kill scenario, in a process of its own: the run killed at event `target`, what it left, the resume."""
    killed = _in_child(out, RUN, target)
    incomplete = [path for _step, path in checkpoints.checkpoint_folders(out) if folder_problems(path)]
    if os.path.exists(os.path.join(out, "config.json")):  # a model only once all of it is in place
        MAEForPreTraining.from_pretrained(out)
    resumed_from = checkpoint_step(newest_complete_checkpoint(out)[0])
    resumed = _in_child(out, [*RUN, "--resume_from_checkpoint", "latest"])
    return {"killed": killed, "incomplete": incomplete, "resumed_from": resumed_from, "resumed": resumed}


@pytest.fixture
def small_digits(monkeypatch):
    """48 training digits built once and shared by the forked runs (building digits costs ~1 s per run); no fsync
    (a killed process loses nothing from the page cache: only a power loss would, which no test simulates)."""
    digits = loading.BUILTIN["digits"]()
    digits["train"] = digits["train"].select(range(48))
    monkeypatch.setitem(loading.BUILTIN, "digits", lambda config_name=None: digits)
    monkeypatch.setattr(files, "_fsync", lambda path: None)
    gc.collect()
    gc.freeze()  # forked runs then skip the parent's objects in Trainer's gc.collect()
    yield
    gc.unfreeze()


def kill_points(events: list[str]) -> list[int]:
    """Every event of the save of checkpoint-4 (staging folder, each file, manifest, renames, rotation of
    checkpoint-2), and of the final model save: the staging folder, its weights, moving them and config.json into
    place, the results, the manifest. Of the copies of the model's code files (*.py) one stands for all."""
    first = next(i for i, e in enumerate(events) if "checkpoint-4" in e)
    last = next(i for i, e in enumerate(events) if "checkpoint-6" in e)
    final = events.index("mkdir .tmp-model")
    final_points = (
        "mkdir .tmp-model",
        "write .tmp-model/model.safetensors",
        "rename model.safetensors",
        "rename config.json",
        "write train_results.json",
        "rename mae_hf_manifest.json",
    )
    chosen = [i for i in range(first, last) if not (events[i].endswith(".py") and events[i - 1].endswith(".py"))]
    chosen = [i for i in chosen if not (events[i].startswith("mkdir") and events[i - 1].startswith("mkdir"))]
    return chosen + [i for i in range(final, len(events)) if events[i] in final_points]


def test_sigkill_at_every_file_of_a_save_then_latest_resumes_to_the_same_weights(tmp_path, small_digits):
    reference = tmp_path / "reference"
    assert _in_child(reference, RUN, record=str(tmp_path / "events.txt")) == 0
    events = (tmp_path / "events.txt").read_text().splitlines()
    targets = kill_points(events)
    assert len(targets) >= 20, events
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), initializer=_one_thread) as pool:
        results = list(pool.map(_kill_and_resume, [str(tmp_path / f"kill_{t}") for t in targets], targets))
    expected = load_file(reference / "model.safetensors")
    lost = {}
    for target, result in zip(targets, results):
        event = events[target]
        assert result["killed"] == -signal.SIGKILL and result["resumed"] == 0, (event, result)
        assert result["incomplete"] == [], event  # a kill leaves only complete checkpoint-N folders
        weights = load_file(tmp_path / f"kill_{target}" / "model.safetensors")
        difference = max((weights[k] - expected[k]).abs().max().item() for k in expected)
        assert difference == 0, (event, difference)
        lost[event] = (6 if target >= events.index("mkdir .tmp-model") else 4) - result["resumed_from"]
    assert set(lost.values()) == {0, 2}  # 2: killed before checkpoint-4 was renamed into place
    print(
        f"\n{len(targets)} kills, {len(targets)} resumes, all to the uninterrupted run's weights (max abs "
        f"difference 0); steps lost per kill: " + ", ".join(f"{e}: {n}" for e, n in lost.items())
    )


def test_sigkill_while_the_final_figure_or_results_are_written_then_resumes_finish_them(tmp_path, small_digits):
    """A kill while `reconstruction.png` or `all_results.json` is written: the resume draws the figure again, and
    the results stay readable (a resume of the finished run reads them back)."""
    from PIL import Image

    assert _in_child(tmp_path / "reference", RUN, record=str(tmp_path / "events.txt")) == 0
    events = (tmp_path / "events.txt").read_text().splitlines()
    for name in ("reconstruction.png", "all_results.json"):
        out = str(tmp_path / name)
        target = next(i for i, event in enumerate(events) if event.startswith("write") and event.endswith(name))
        assert _in_child(out, RUN, target) == -signal.SIGKILL
        for _ in range(2):  # the resume of the killed run, then that of the finished run
            assert _in_child(out, [*RUN, "--resume_from_checkpoint", "latest"]) == 0, name
        Image.open(os.path.join(out, "reconstruction.png")).verify()
        if os.path.exists(os.path.join(out, "all_results.json")):
            with open(os.path.join(out, "all_results.json")) as file:
                assert "train_loss" in json.load(file)
