"""The three scripts under DeepSpeed ZeRO-2 / ZeRO-3, FSDP2, FSDP1 and DDP with 2 CPU processes (gloo), as
experiments/engines_on_cpu.py runs each row of its table: stopped after step 2 as a kill would, resumed with
`--resume_from_checkpoint latest`, then compared with one uninterrupted process of the same global batch (losses
and final weights within float tolerance; gloo's AVG has returned sums, pytorch#162338, so numbers are compared,
not "it runs"). Every launch runs under a timeout, so a hang (a forward on one process under parameter sharding)
fails its test."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
# Float noise of 2 processes against 1 (summation order), measured for DDP: 3.4e-6 on the weights, 1.2e-7 on the
# losses. A parameter in the wrong weight-decay group moves the weights by ~1e-4 (weight decay 5 in these runs).
WEIGHTS, LOSSES = 2e-5, 1e-5


def experiment():
    spec = importlib.util.spec_from_file_location("engines_on_cpu", ROOT / "experiments" / "engines_on_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENGINES = experiment()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


def assert_parity(row: dict) -> None:
    assert row["weights"] <= WEIGHTS and row["train_loss"] <= LOSSES and row["eval_loss"] <= LOSSES, row


@pytest.mark.parametrize(
    "engine, processes_after",
    [("ZeRO-2", 2), ("ZeRO-3", 2), ("FSDP2", 1), ("FSDP1", 2), ("DDP", 1)],
    ids=["zero2", "zero3", "fsdp2-resumed-on-1", "fsdp1", "ddp-resumed-on-1"],
)
def test_pretraining(engine, processes_after, work):
    """Every evaluation runs the reconstruction figure and the feature monitor (which hung under ZeRO-3 and FSDP2);
    the final model is gathered into model.safetensors; FSDP and DDP resume on another number of processes
    (FSDP through torch's distributed checkpoint); FSDP1 trains with the right weight-decay groups (resume: not on
    CPU, see the experiment)."""
    row = ENGINES.run_row(engine, "pretraining", work, processes_after, remote_code=engine == "FSDP2")
    assert row["resume"].startswith("checkpoint-2") or engine == "FSDP1", row
    assert row["final model"].startswith("MAEForPreTraining"), row
    if engine == "FSDP2":  # saved as our class, with our files, whatever fully_shard made of it
        assert row["final model"] == "MAEForPreTraining (remote code: transformers_modules)", row
        assert json.loads((work / "pretraining-FSDP2" / "config.json").read_text())["auto_map"][
            "AutoModelForPreTraining"
        ] == ("modeling_mae.MAEForPreTraining")
    assert_parity(row)


def test_deepspeed_refuses_to_resume_on_another_number_of_processes(work):
    """ZeRO's optimizer states are partitioned per process: a resume with 1 process is refused before any work."""
    out = work / "pretraining-ZeRO-3"
    if not (out / "checkpoint-2").is_dir():
        ENGINES.run_row("ZeRO-3", "pretraining", work, remote_code=False)
    before = sorted(p.name for p in out.iterdir())
    resume = [
        *ENGINES.arguments("pretraining", out, 1),
        *ENGINES.ENGINES["ZeRO-3"],
        "--resume_from_checkpoint",
        "latest",
    ]
    done = ENGINES.launch("pretraining", resume, processes=1)
    assert done.returncode != 0
    assert "partitioned for 2 processes; this run has 1" in done.stderr and "ds_to_universal" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def finished_row(engine: str, work: Path, processes_after: int = 2) -> Path:
    """The output dir of the engine's pretraining row (run here when this test runs alone)."""
    out = work / f"pretraining-{engine}"
    if not (out / "model.safetensors").exists():
        ENGINES.run_row(engine, "pretraining", work, processes_after, remote_code=False)
    return out


def test_a_run_killed_in_its_final_save_is_finished_from_its_last_checkpoint(work, tmp_path):
    """The resumed run has nothing left to train: it saves the final model from checkpoint-4, which no engine has
    loaded (FSDP2's distributed checkpoint read by torch's dcp_to_torch_save), on another number of processes."""
    finished = finished_row("FSDP2", work, 1)
    out = tmp_path / "pretraining-FSDP2"
    shutil.copytree(finished, out)
    for name in ("model.safetensors", "config.json", "mae_hf_manifest.json"):
        (out / name).unlink()
    resume = [
        *ENGINES.arguments("pretraining", out, 2),
        *ENGINES.ENGINES["FSDP2"],
        "--resume_from_checkpoint",
        "latest",
    ]
    done = ENGINES.launch("pretraining", resume)
    assert done.returncode == 0 and "is the end of training" in done.stderr, done.stderr[-3000:]
    saved, expected = load_file(out / "model.safetensors"), load_file(finished / "model.safetensors")
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)


def test_deepspeed_partitions_are_read_without_deepspeed_s_engine(work, tmp_path):
    """ZeRO-3 without stage3_gather_16bit_weights_on_model_save writes no model.safetensors in its checkpoints:
    its partitions are consolidated (DeepSpeed's zero_to_fp32) into what the gathered model holds."""
    from mae_hf.distributed import checkpoint_state_dict

    checkpoint = finished_row("ZeRO-3", work) / "checkpoint-2"
    partitions = shutil.copytree(checkpoint, tmp_path / "checkpoint-2", ignore=shutil.ignore_patterns("*.safetensors"))
    state, expected = checkpoint_state_dict(str(partitions)), load_file(checkpoint / "model.safetensors")
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_classification_under_zero3_from_a_partitioned_checkpoint(work):
    """ZeRO-3 builds the fine-tuned model partitioned as it loads the MAE checkpoint (empty tensors): the shape
    checks, the layer-decay groups and the cosine schedule with a minimum lr all read the parameters' own shapes."""
    row = ENGINES.run_row("ZeRO-3", "classification", work, remote_code=False)
    assert row["resume"] == "checkpoint-2" and row["final model"] == "MAEForImageClassification", row
    assert_parity(row)


def test_segmentation_under_fsdp2_launched_with_the_accelerate_config(work):
    """configs/accelerate/fsdp2.yaml as users launch it. Compared with DDP on 2 processes: without SyncBatchNorm
    (GPUs only) the BatchNorm statistics are per process, which one process cannot reproduce; every process
    evaluates with the main process's, which is what is saved."""
    row = ENGINES.run_row("FSDP2", "segmentation", work, accelerate=True)
    assert row["resume"] == "checkpoint-2" and row["evaluates"] == "steps 2, 4 + figures", row
    assert row["final model"] == "MAEForSemanticSegmentation (remote code: transformers_modules)", row
    assert_parity(row)


def test_accelerate_cpu_launcher_starts_one_process_and_says_so(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs ONE process: the run warns and names the commands that
    start N processes."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    script = [str(ROOT / "run_pretraining.py"), "--dataset_name", "digits", "--max_train_samples", "16"]
    script += ["--do_eval", "false", "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    done = ENGINES.run_group([*launch, *script], ENGINES.environment(), timeout=300)
    assert "as ONE process" in done.stderr and "--nproc_per_node N" in done.stderr, done.stderr[-3000:]
