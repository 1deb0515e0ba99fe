"""MAETrainer: weight-decay split, fixed evaluation masks, and the stop on a non-finite loss."""

import os

import pytest
import torch
from conftest import tiny_config
from torch.utils.data import Dataset

from mae_hf import MAEForImageClassification, MAEForPreTraining
from mae_hf.arguments import RecipeArguments
from mae_hf.data import collate_pixel_values
from mae_hf.optim import decay_parameter_names
from mae_hf.trainer import MAETrainer, NonFiniteLossError


class Pixels(Dataset):
    """Random images; after `nan_after` reads, images full of NaN (the loader runs in this process)."""

    def __init__(self, count=16, nan_after=None):
        self.images, self.nan_after, self.reads = torch.randn(count, 3, 32, 32), nan_after, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads += 1
        if self.nan_after is not None and self.reads > self.nan_after:
            return {"pixel_values": torch.full_like(self.images[index], float("nan"))}
        return {"pixel_values": self.images[index]}


def trainer_for(tmp_path, model, train=None, evaluation=None, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        report_to="none",
        remove_unused_columns=False,
        label_names=["pixel_values"],
        use_cpu=True,
        logging_steps=1,
    )
    args = RecipeArguments(**{**settings, **overrides})
    return MAETrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluation, data_collator=collate_pixel_values
    )


def test_no_decay_for_biases_norms_and_tokens():
    model = MAEForPreTraining(tiny_config())
    decayed = set(decay_parameter_names(model))
    expected = {
        name
        for name, p in model.named_parameters()
        if name.endswith("weight") and ".norm" not in name and "norm1" not in name and "norm2" not in name
    }
    assert decayed == expected
    assert not {"vit.cls_token", "decoder.mask_token"} & decayed
    assert "vit.blocks.0.attn.qkv.weight" in decayed and "vit.patch_embed.proj.weight" in decayed
    classifier = MAEForImageClassification(tiny_config(num_labels=3))
    assert "head.weight" in decay_parameter_names(classifier)
    assert "fc_norm.weight" not in decay_parameter_names(classifier)


def test_trainer_builds_optimizer_groups_from_that_split(tmp_path):
    model = MAEForPreTraining(tiny_config())
    trainer = trainer_for(tmp_path, model, Pixels(), weight_decay=0.05)
    optimizer = trainer.create_optimizer()
    by_decay = {group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in by_decay[0.05]} == set(decay_parameter_names(model))
    assert "decoder.mask_token" in {names[i] for i in by_decay[0.0]}


def test_evaluation_masks_are_fixed_and_training_rng_is_untouched(tmp_path):
    trainer = trainer_for(tmp_path, MAEForPreTraining(tiny_config()), evaluation=Pixels())
    torch.manual_seed(5)
    first = trainer.evaluate()["eval_loss"]
    after_first = torch.rand(1)
    torch.manual_seed(5)
    second = trainer.evaluate()["eval_loss"]
    assert first == second
    assert torch.equal(torch.rand(1), after_first)  # the training stream goes on as if nothing happened
    trainer.args.eval_mask_seed = 99
    assert trainer.evaluate()["eval_loss"] != first


@pytest.mark.parametrize("eval_batch", [3, 16])
def test_evaluation_scores_every_example_with_dataloader_drop_last(tmp_path, eval_batch):
    """--dataloader_drop_last is for training batches; transformers applies it to evaluation too, where it left
    10 % 3 = 1 image unscored, or all of them (no eval_loss) when the eval batch is larger than the split."""
    model, images = MAEForPreTraining(tiny_config()), Pixels(count=10)
    dropping = trainer_for(
        tmp_path, model, Pixels(count=6), images, dataloader_drop_last=True, per_device_eval_batch_size=eval_batch
    )
    assert sum(len(batch["pixel_values"]) for batch in dropping.get_eval_dataloader()) == 10
    assert len(dropping.get_train_dataloader()) == 1  # training still drops: 6 images, one batch of 4
    keeping = trainer_for(tmp_path, model, evaluation=images, per_device_eval_batch_size=eval_batch)
    assert dropping.evaluate()["eval_loss"] == pytest.approx(keeping.evaluate()["eval_loss"])


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    model = MAEForPreTraining(tiny_config())
    trainer = trainer_for(tmp_path, model, Pixels(16, nan_after=8), save_steps=1, max_steps=4)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2"]
    saved = MAEForPreTraining.from_pretrained(tmp_path / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no update from the bad batch


def test_deferred_finite_check_reads_the_loss_only_at_logging_and_checkpoint_steps(tmp_path, monkeypatch):
    model = MAEForPreTraining(tiny_config())
    trainer = trainer_for(
        tmp_path,
        model,
        Pixels(24, nan_after=8),
        save_steps=2,
        logging_steps=3,
        max_steps=6,
        finite_loss_check="log",
        logging_nan_inf_filter=False,
    )
    checks, syncs, inside_step = [], [], []
    check, step = MAETrainer._check_accumulated_loss, MAETrainer.training_step
    item, as_bool = torch.Tensor.item, torch.Tensor.__bool__

    def spy_step(self, *args, **kwargs):
        inside_step.append(True)
        try:
            return step(self, *args, **kwargs)
        finally:
            inside_step.pop()

    monkeypatch.setattr(MAETrainer, "training_step", spy_step)
    monkeypatch.setattr(
        MAETrainer, "_check_accumulated_loss", lambda self: checks.append(self.state.global_step) or check(self)
    )
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (inside_step and syncs.append("item"), item(self))[1])
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: (inside_step and syncs.append("bool"), as_bool(self))[1])
    with pytest.raises(NonFiniteLossError, match="became non-finite at step 3"):
        trainer.train()
    assert syncs == []  # nothing inside the training step reads a tensor on the host
    assert checks == [2, 3]  # a checkpoint at step 2; step 3 (bad) is caught at its logging step
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]  # and no checkpoint holds the bad weights


def test_default_optimizer_is_fused_adamw_and_sdpa_backend_is_applied(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path, MAEForPreTraining(tiny_config()), Pixels(8), max_steps=1, sdpa_backend="math")
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    backends = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        backends.append(torch._C._get_math_sdp_enabled() and not torch._C._get_flash_sdp_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    trainer.train()
    assert backends and all(backends)  # every attention call ran with only the math kernel allowed


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_gpu_fast_paths_on_cuda_only_and_never_over_a_chosen_precision(tmp_path, monkeypatch, tf32_flags):
    from mae_hf.run_utils import apply_gpu_fast_paths

    cpu = RecipeArguments(output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=2)
    assert apply_gpu_fast_paths(cpu) == [] and not cpu.bf16 and not cpu.dataloader_persistent_workers

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(RecipeArguments, "device", property(lambda self: torch.device("cuda")))
    gpu = RecipeArguments(output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=2)
    gpu.dataloader_pin_memory = True  # its default off the CPU
    assert apply_gpu_fast_paths(gpu) == [
        "bf16",
        "tf32",
        "dataloader_persistent_workers",
        "non_blocking",
        "logging_nan_inf_filter=False",
    ]
    assert gpu.bf16 and gpu.mixed_precision == "bf16" and gpu.tf32 and gpu.accelerator_config.non_blocking
    assert gpu.optim == "adamw_torch_fused" and gpu.dataloader_pin_memory
    assert torch.backends.cuda.matmul.allow_tf32
    chosen = RecipeArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        fp16=False,
        tf32=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    chosen.fp16 = True  # (fp16 cannot be constructed on a CPU-only machine)
    assert apply_gpu_fast_paths(chosen) == ["logging_nan_inf_filter=False"]
    assert not chosen.bf16 and chosen.tf32 is False
    launched = RecipeArguments(output_dir=str(tmp_path), use_cpu=True)
    launched.mixed_precision = "fp16"  # what `accelerate launch --mixed_precision fp16` leaves in the arguments
    assert "bf16" not in apply_gpu_fast_paths(launched) and not launched.bf16
    off = RecipeArguments(output_dir=str(tmp_path), use_cpu=True, gpu_fast_paths=False)
    assert apply_gpu_fast_paths(off) == [] and not off.bf16
