"""The engine module (`mae_hf.distributed`): optimizer groups, the encoder run through the engine, the whole state
dict and the saved folder under FSDP1 / FSDP2 / ZeRO-3 in two real gloo processes; the checks that refuse a dropped
engine, a wrong launch, a resume an engine cannot do and a final model that would not load."""

import copy
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import spawn, tiny_config

from mae_hf import MAEForImageClassification
from mae_hf.banner import parameter_counts
from mae_hf.distributed import (
    call_through,
    check_engine,
    check_final_model,
    check_launch,
    check_resume_engine,
    checkpoint_engine,
    parameter_shapes,
    parameters_sharded,
    whole_state_dict,
)
from mae_hf.model_card import write_model_card
from mae_hf.optim import param_groups

ROOT = Path(__file__).resolve().parent.parent


def experiment():
    """experiments/engines_on_cpu.py, whose helpers launch and check runs (`loads_without_mae_hf`)."""
    spec = importlib.util.spec_from_file_location("engines_on_cpu", ROOT / "experiments" / "engines_on_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group_summary(groups) -> list:
    """Each group's weight decay, lr scale and parameter names: what must not depend on the engine."""
    return sorted((g["weight_decay"], round(g["lr_scale"], 9), tuple(sorted(g["names"]))) for g in groups)


def _wrap(engine: str, model):
    """`model` as accelerate wraps it for `engine` (on CPU: FSDP1 with device_id cpu, see tests/cpu_engines.py)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mae_hf.layers import Block

    if engine == "FSDP2":
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from cpu_engines import fsdp1_cpu_device
    from torch.distributed.fsdp import _init_utils

    _init_utils._get_device_from_device_id = fsdp1_cpu_device(_init_utils._get_device_from_device_id)
    policy = ModuleWrapPolicy({Block})
    flat = engine == "FSDP1 flat"
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=not flat, device_id="cpu")


def _engines(rank, world, folder):
    """Groups, sharding, the encoder through the engine, the whole state dict and the saved folder per engine."""
    torch.manual_seed(0)
    base = MAEForImageClassification(tiny_config(num_labels=5, num_hidden_layers=2))
    shapes = parameter_shapes(base)
    expected = group_summary(param_groups(base, 1e-3, 0.05, 0.65))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))  # each process its own
    with torch.no_grad():
        features = base.vit(pixels).last_hidden_state
    result = {}
    for engine in ("FSDP1", "FSDP2"):
        wrapped = _wrap(engine, copy.deepcopy(base))
        inner = getattr(wrapped, "module", wrapped)
        local_shapes = {n: tuple(p.shape) for n, p in wrapped.named_parameters()}
        with torch.no_grad():
            through = call_through(wrapped, inner.vit, pixels).last_hidden_state
        whole = whole_state_dict(wrapped)
        result[engine] = {
            "sharded": parameters_sharded(wrapped),
            "one_dimensional": sum(len(s) == 1 for s in local_shapes.values()),
            "groups": group_summary(param_groups(wrapped, 1e-3, 0.05, 0.65, shapes)) == expected,
            "old_groups": group_summary(param_groups(wrapped, 1e-3, 0.05, 0.65)) == expected,
            "encoder": torch.allclose(through, features, atol=1e-6),
            "whole": rank != 0 or all(torch.equal(whole[k], v) for k, v in base.state_dict().items()),
        }
        if engine == "FSDP2":  # DTensors report their whole shape: counted as without an engine
            result[engine]["counts"] = list(parameter_counts(wrapped)) == list(parameter_counts(base))
            result[engine]["class"] = type(wrapped).__name__
            if rank == 0:
                wrapped.save_pretrained(folder / "saved", state_dict=whole)
                write_model_card(folder / "saved", wrapped, "digits", [], {})
    try:
        param_groups(_wrap("FSDP1 flat", copy.deepcopy(base)), 1e-3, 0.05, 0.65, shapes)
        result["flat"] = "accepted"
    except ValueError as error:
        result["flat"] = str(error)
    result["ZeRO-3"] = _zero3(base, expected)
    return result


def _zero3(base, expected) -> dict:
    """A classifier built under ZeRO-3's partitioning (as from_pretrained builds it under --deepspeed with stage 3):
    every parameter is an empty tensor on this process."""
    import deepspeed
    from cpu_engines import no_deepspeed_compilation

    no_deepspeed_compilation()
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    model = copy.deepcopy(base)
    deepspeed.zero.Init(module=model, config_dict_or_path=config)
    return {
        "sharded": parameters_sharded(model),
        "empty": all(p.numel() == 0 for p in model.parameters()),
        "groups": group_summary(param_groups(model, 1e-3, 0.05, 0.65)) == expected,
        "counts": list(parameter_counts(model)) == list(parameter_counts(base)),
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    return spawn(_engines, folder), folder


def test_optimizer_groups_are_the_same_however_the_model_is_wrapped(engines):
    """Weight decay and layer decay groups (names, rates) as without an engine, from the shapes taken before
    wrapping: FSDP1 shows the optimizer 1-D shards (grouped by ndim they all went undecayed), ZeRO-3 empty tensors."""
    result, _ = engines
    assert result["FSDP1"]["one_dimensional"] > 0 and not result["FSDP1"]["old_groups"]  # what ndim alone gets
    for engine in ("FSDP1", "FSDP2", "ZeRO-3"):
        assert result[engine]["sharded"] and result[engine]["groups"], engine
    assert result["ZeRO-3"]["empty"]
    assert "_flat_param" in result["flat"] and '"use_orig_params": true' in result["flat"]
    assert "or use FSDP2" in result["flat"]


def test_encoder_runs_through_the_engine_and_the_whole_model_is_gathered(engines):
    result, _ = engines
    for engine in ("FSDP1", "FSDP2"):
        assert result[engine]["encoder"] and result[engine]["whole"], engine
    for engine in ("FSDP2", "ZeRO-3"):  # (FSDP1's are counted before wrapping, see StartBanner)
        assert result[engine]["counts"], engine  # the banner counts whole parameters, not this process's slice


def test_a_model_saved_under_fsdp2_names_our_classes_and_loads_with_remote_code(engines):
    result, folder = engines
    saved = folder / "saved"
    assert result["FSDP2"]["class"] == "FSDPMAEForImageClassification"  # what fully_shard made of it
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["MAEForImageClassification"]
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_mae.MAEForImageClassification"
    assert {"modeling_mae.py", "configuration_mae.py", "layers.py"} <= {p.name for p in saved.iterdir()}
    assert not list(saved.glob("*fsdp*")), sorted(p.name for p in saved.iterdir())
    assert "# MAEForImageClassification (mae_vit)" in (saved / "README.md").read_text()
    module, name = experiment().loads_without_mae_hf(saved, "classification").split()
    assert name == "MAEForImageClassification" and module.startswith("transformers_modules")


def _trainer(engine: str, granted: str | None, device="cpu", world=2):
    args = SimpleNamespace(deepspeed="ds.json" if engine == "DeepSpeed" else None, fsdp=engine == "FSDP")
    args.device, args.world_size = device, world
    return SimpleNamespace(args=args, is_deepspeed_enabled=granted == "DeepSpeed", is_fsdp_enabled=granted == "FSDP")


def test_an_engine_that_accelerate_dropped_is_refused(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    check_engine(_trainer("FSDP", "FSDP"))
    check_engine(_trainer(None, None))
    with pytest.raises(ValueError, match=r"FSDP was asked for, but .* set up no sharding engine .*plain DDP"):
        check_engine(_trainer("FSDP", None))
    with pytest.raises(ValueError, match=r"DeepSpeed was asked for, but .* set up no sharding engine"):
        check_engine(_trainer("DeepSpeed", None))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # `accelerate launch --use_fsdp` / an accelerate config
    with pytest.raises(ValueError, match="FSDP was asked for"):
        check_engine(_trainer(None, None))


def test_a_launch_that_does_not_start_the_processes_it_says_is_refused(monkeypatch, caplog):
    args = SimpleNamespace(world_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # DeepSpeed without a GPU and without --use_cpu: each process alone
    with pytest.raises(ValueError, match=r"started 2 processes .* runs as 1 of 1: each process would train on all"):
        check_launch(args)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # `accelerate launch --cpu --num_processes 2`
    monkeypatch.setenv("MASTER_PORT", "29500")
    check_launch(args)
    assert "as ONE process" in caplog.text and "accelerate launch --multi_gpu --num_processes N" in caplog.text


def _checkpoint(folder: Path, files: list[str]) -> Path:
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def test_resume_across_engines_and_world_sizes(tmp_path):
    ddp = _checkpoint(tmp_path / "ddp", ["rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "model.safetensors"])
    deepspeed = _checkpoint(
        tmp_path / "ds",
        [f"global_step4/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)] + ["rng_state_0.pth"],
    )
    fsdp = _checkpoint(tmp_path / "fsdp", ["pytorch_model_fsdp_0/__0_0.distcp", "rng_state.pth"])
    assert [checkpoint_engine(str(p)) for p in (ddp, deepspeed, fsdp)] == [(None, 2), ("DeepSpeed", 2), ("FSDP", 1)]

    def args(engine=None, world=1):
        return SimpleNamespace(
            deepspeed="z.json" if engine == "DeepSpeed" else None, fsdp=engine == "FSDP", world_size=world
        )

    check_resume_engine(args(), str(ddp))  # DDP: any number of processes
    check_resume_engine(args("FSDP", 2), str(fsdp))  # FSDP: resharded by torch's distributed checkpoint
    check_resume_engine(args("DeepSpeed", 2), str(deepspeed))
    with pytest.raises(ValueError, match=r"partitioned for 2 processes; this run has 1,.*ds_to_universal"):
        check_resume_engine(args("DeepSpeed", 1), str(deepspeed))
    with pytest.raises(
        ValueError, match=r"written with DeepSpeed, this run uses DDP / one process.*--model_name_or_path"
    ):
        check_resume_engine(args(), str(deepspeed))
    with pytest.raises(ValueError, match=r"written with DDP / one process, this run uses FSDP"):
        check_resume_engine(args("FSDP", 2), str(ddp))
    fsdp1 = _checkpoint(tmp_path / "fsdp1", ["pytorch_model_fsdp_0/__0_0.distcp", "optimizer_0/__0_0.distcp"])
    fsdp1_args = SimpleNamespace(**vars(args("FSDP", 2)), fsdp_plugin_args={"fsdp_version": 1})
    with pytest.raises(
        ValueError, match=r"FSDP1 SHARDED_STATE_DICT optimizer states, which accelerate .* zero moments"
    ):
        check_resume_engine(fsdp1_args, str(fsdp1))
    check_resume_engine(args("FSDP", 2), str(fsdp1))  # FSDP2 reads them (torch's loader initialises the state)


def test_no_finished_run_without_a_model_that_loads(tmp_path):
    check_final_model(str(tmp_path), ["config.json", "model.safetensors", "README.md"])
    with pytest.raises(RuntimeError, match=r"has no config.json and no model weights .* not marked finished"):
        check_final_model(str(tmp_path), ["README.md"])  # what FSDP's SHARDED_STATE_DICT left
    with pytest.raises(RuntimeError, match=r"has no model weights"):
        check_final_model(str(tmp_path), ["config.json", "pytorch_model_fsdp_0"])


def test_fsdp_true_on_the_command_line_and_in_a_config_file(tmp_path):
    """transformers takes `--fsdp true` for a legacy sharding option ("Unknown `fsdp` option: true")."""
    import run_pretraining
    from mae_hf.run_utils import parse_arguments

    config = tmp_path / "engine.yaml"
    config.write_text(f"fsdp: true\nfsdp_config: {ROOT / 'configs' / 'fsdp' / 'fsdp2.json'}\n")
    out = ["--output_dir", str(tmp_path / "out")]
    for argv in ([str(config), *out], ["--fsdp", "true", *out], ["--fsdp", *out]):
        training_args = parse_arguments(run_pretraining.ARGUMENTS, argv)[2]
        assert training_args.fsdp is True and training_args.fsdp_plugin_args["fsdp_version"] == 2, argv
    assert not parse_arguments(run_pretraining.ARGUMENTS, ["--fsdp", "false", *out])[2].fsdp


def test_auto_resume_across_world_sizes_is_refused_before_any_work(tmp_path):
    """`--resume_from_checkpoint auto` (the requeued job's flag) resumes the newest checkpoint as `latest` does: a
    DeepSpeed one of 2 processes on 1 is refused before any work (it failed after loading the data and building the
    model, inside DeepSpeed: "Automatic adjustment of ZeRO's optimizer state partitioning ... not supported")."""
    from mae_hf.run_directory.files import describe_files, write_manifest

    out = tmp_path / "out"
    names = [f"global_step4/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
    checkpoint = _checkpoint(out / "checkpoint-4", [*names, "rng_state_0.pth", "rng_state_1.pth"])
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    write_manifest(str(checkpoint), None, 4, describe_files(str(checkpoint)))
    for wanted in ("auto", "latest"):
        args = SimpleNamespace(deepspeed="z.json", fsdp=False, world_size=1, output_dir=str(out))
        args.resume_from_checkpoint = wanted
        with pytest.raises(ValueError, match=r"checkpoint-4 holds DeepSpeed ZeRO optimizer states partitioned for 2"):
            check_resume_engine(args)
    check_resume_engine(SimpleNamespace(**{**vars(args), "world_size": 2}))
