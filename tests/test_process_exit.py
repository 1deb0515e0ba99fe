"""How a script's process ends (`mae_hf.process_exit.run_main`): its exit status, its output, its threads and atexit handlers kept,
and no abort at interpreter shutdown when a torch C++ thread still runs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One process with a gloo process group; `ending` picks how main ends. The spinning thread stands for what aborted a
# finished two-process run in CI twice: a thread inside torch's C++ code (gloo's workers there) taking the GIL while
# the interpreter finalises, which CPython answers with pthread_exit and C++ with std::terminate (SIGABRT, exit -6).
PROGRAM = """
import atexit, sys, threading, time
import torch, torch.distributed as dist
from mae_hf.process_exit import run_main
from mae_hf.run_directory.preemption import RunPreempted

ending, folder = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
atexit.register(lambda: print("atexit: process group", "alive" if dist.is_initialized() else "destroyed"))


def spin():
    x = torch.ones(64, 64)
    while True:
        x = (x @ x).clamp(max=1.0)


def main():
    print("main ran")  # stdout is a pipe: block-buffered, written only if it is flushed
    if ending == "failed":
        raise ValueError("bad input")
    threading.Thread(target=spin, daemon=True).start()
    threading.Thread(target=lambda: (time.sleep(0.5), print("non-daemon thread done"))).start()  # waited for
    if ending == "preempted":
        raise RunPreempted("stopped")


run_main(main)
"""


def test_a_script_ends_with_its_status_its_output_and_its_atexit_handlers_and_no_abort(tmp_path):
    endings = {"finished": 0, "preempted": 75, "failed": 1}
    runs = {}
    for ending in endings:
        (tmp_path / ending).mkdir()
        command = [sys.executable, "-c", PROGRAM, ending, str(tmp_path / ending)]
        runs[ending] = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = {ending: run.communicate(timeout=120) for ending, run in runs.items()}
    statuses = {ending: run.returncode for ending, run in runs.items()}
    assert statuses == endings, {ending: err[-2000:] for ending, (out, err) in outputs.items()}
    for ending in ("finished", "preempted"):
        out, err = outputs[ending]
        assert out.splitlines() == ["main ran", "non-daemon thread done", "atexit: process group destroyed"], err[
            -2000:
        ]
        assert "terminate called" not in err
    out, err = outputs["failed"]  # a failure ends as Python ends it: traceback, process group left to the others
    assert out.splitlines() == ["main ran", "atexit: process group alive"]
    assert err.rstrip().endswith("ValueError: bad input")


def test_the_scripts_and_evaluate_features_run_their_main_through_run_main():
    for script in ("run_pretraining.py", "run_image_classification.py", "run_semantic_segmentation.py"):
        assert (ROOT / script).read_text().rstrip().endswith('if __name__ == "__main__":\n    run_main(main)'), script
    assert (ROOT / "mae_hf/evaluate_features.py").read_text().rstrip().endswith("run_main(main, sys.argv[1:])")
