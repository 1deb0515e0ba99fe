"""`transformers.Trainer` for MAE: the recipe's weight-decay split, evaluation masks drawn per example from a fixed
seed, a stop on a non-finite loss, per-sample training randomness, crash-safe checkpoints, and the same behaviour
under every engine (DDP, FSDP, DeepSpeed; see `distributed`). The figures drawn at evaluations: `figure_callbacks`."""

import contextlib

import torch
from accelerate.utils import send_to_device
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length
from transformers.utils import logging

from .data.seeding import (
    EvaluationSamples,
    SeededCollator,
    SeededSamples,
    evaluation_draws,
    find_sample_key_sampler,
    sample_key_sampler,
)
from .distributed import EngineHooks, call_through, parameter_shapes, parameters_sharded
from .modeling_segmentation import segment_to_original_size
from .optim import decay_parameter_names, param_groups
from .run_directory.checkpoints import CrashSafeCheckpoints
from .run_directory.preemption import stop_request

logger = logging.get_logger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


class FiniteLossCheck(TrainerCallback):
    """Where the Trainer is about to log, evaluate or save a checkpoint, or ends training (the control flags that
    `DefaultFlowCallback` and the pre-emption callback set at a step's or an epoch's end), the losses accumulated
    on the device since the last check are read (`MAETrainer._check_accumulated_loss`): a non-finite one stops
    training before it is logged or saved, so no checkpoint holds the bad weights."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.trainer._check_accumulated_loss()

    on_epoch_end = on_step_end


class MAETrainer(CrashSafeCheckpoints, EngineHooks, Trainer):
    """`eval_data_collator`: a collator for evaluation only (training may mix images, evaluation must not).
    `image_decoder`: a `GPUImageDecoder` that turns batches of encoded images into pixel_values on the device.
    `sample_draws`: name -> function drawing a per-example model input (the pretraining mask noise).
    `monitor`: a `FeatureMonitor` whose k-NN / linear-probe metrics join every evaluation's metrics.
    `args`: RecipeArguments (its sdpa_backend, finite_loss_check, layer_decay and use_lars are read).

    Training examples (map-style datasets) are drawn with every random choice seeded from (data seed, epoch,
    example index), see `data/seeding.py`; evaluation examples with their `sample_draws` seeded from (eval_mask_seed,
    index), so that eval_loss does not depend on the number of processes; checkpoints are written crash-safe, see
    `run_directory/checkpoints.py`. Under parameter sharding (FSDP, ZeRO-3) the monitor runs the encoder through the
    engine on every process; what else changes past one process (the final model gathered whole, ...) is
    `EngineHooks`'."""

    def __init__(self, *args, eval_data_collator=None, image_decoder=None, sample_draws=None, monitor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator, self.image_decoder, self.monitor = eval_data_collator, image_decoder, monitor
        self.sample_draws = dict(sample_draws or {})
        self._nonfinite_loss, self._checked_step = None, 0  # device flag, no host sync until checked
        self.add_callback(FiniteLossCheck(self))  # after the callbacks that decide to log, evaluate or save
        # Taken before any engine wraps the model: the optimizer groups need each tensor's own shape.
        self.parameter_shapes = parameter_shapes(self.model)

    @property
    def data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def get_train_dataloader(self):
        if not has_length(self.train_dataset):  # a stream: no example indices to key the draws on
            return super().get_train_dataloader()
        dataset, collator = self.train_dataset, self.data_collator
        self.train_dataset = SeededSamples(dataset, self.data_seed, self.sample_draws)
        self.data_collator = SeededCollator(collator, self.data_seed, self.sample_draws)
        try:
            loader = super().get_train_dataloader()
        finally:
            self.train_dataset, self.data_collator = dataset, collator
        # A DataLoader draws its workers' base seed from its generator each time it starts an iterator, from torch's
        # global one when it has none. With persistent workers that is once per process, so a resumed run drew once
        # more than the uninterrupted one (at its first full epoch) and shifted the model's own draws (stochastic
        # depth). The examples' draws are seeded per example and do not use the workers' seeds. (accelerate's
        # loaders iterate the DataLoader they wrap.)
        getattr(loader, "base_dataloader", loader).generator = torch.Generator().manual_seed(self.data_seed)
        return loader

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        # Trainer's hook around accelerate's skip_first_batches, which wraps the batch sampler once more. Under several
        # processes the (epoch, index) sampler then lies four wrappers deep, where neither accelerate's nor Trainer's
        # set_epoch reaches it: the rest of a resumed epoch after the first took the first epoch's order and draws.
        skipped = super().get_resumed_dataloader(dataloader, num_batches)
        keys = find_sample_key_sampler(skipped)
        if keys is not None and hasattr(skipped, "set_epoch"):
            set_epoch = skipped.set_epoch

            def set_epoch_of_the_keys_too(epoch: int) -> None:
                set_epoch(epoch)
                keys.set_epoch(epoch)

            skipped.set_epoch = set_epoch_of_the_keys_too
        return skipped

    def _get_train_sampler(self, train_dataset=None):
        # Private Trainer method: the one place that gives the training sampler (see ARCHITECTURE.md, Private API).
        if not isinstance(train_dataset, SeededSamples):
            return super()._get_train_sampler(train_dataset)
        strategy = self.args.train_sampling_strategy
        if strategy in ("group_by_length", "batch_rebalance"):  # before the Trainer reads examples to measure them
            raise ValueError(
                f"--train_sampling_strategy {strategy} groups examples by token count, which images do not have; "
                "use random or sequential"
            )
        return sample_key_sampler(super()._get_train_sampler(train_dataset), train_dataset, self.data_seed)

    def get_eval_dataloader(self, eval_dataset=None):
        # Every example is scored: transformers applies --dataloader_drop_last (meant for training batches) to
        # evaluation too, which leaves the last images unscored, or all of them when the split is one small batch.
        saved = self.data_collator, self.args.dataloader_drop_last
        collator = self.eval_data_collator or self.data_collator
        self.data_collator = SeededCollator(collator, self.args.eval_mask_seed, self.sample_draws)
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(self._with_evaluation_draws(eval_dataset))
        finally:
            self.data_collator, self.args.dataloader_drop_last = saved

    def _with_evaluation_draws(self, eval_dataset):
        """The evaluation split with each example's `sample_draws` (its mask) seeded from (eval_mask_seed, index):
        the same masks with any number of processes (each process drawing from one seeded stream would give the
        examples it scores other masks than one process gives them)."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        seed = self.args.eval_mask_seed
        if has_length(dataset):
            return EvaluationSamples(dataset, seed, self.sample_draws)
        if self.sample_draws and hasattr(dataset, "map"):  # a streamed split: keyed by the position in the stream
            return dataset.map(evaluation_draws(seed, self.sample_draws), with_indices=True)
        return dataset

    def get_decay_parameter_names(self, model) -> list[str]:
        return decay_parameter_names(model, self.parameter_shapes)

    def create_optimizer(self, model=None):
        """The recipe's groups (no decay on biases, norms, tokens; layer-wise lr decay when `args.layer_decay` is
        set), with the optimizer the arguments name (fused AdamW by default), or LARS with `args.use_lars`. `model`:
        the model as the engine wrapped it when the Trainer creates the optimizer after wrapping (FSDP1); the groups
        follow the shapes recorded before (`param_groups`)."""
        if self.optimizer is None:
            model = self.model if model is None else model
            args = self.args
            groups = param_groups(model, args.learning_rate, args.weight_decay, args.layer_decay, self.parameter_shapes)
            if self.args.use_lars:
                from .lars import LARS

                self.optimizer = LARS(groups, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
            else:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def decoded(self, inputs: dict) -> dict:
        """A batch of encoded images (`--image_decoding gpu`) as `pixel_values`, decoded, cropped, flipped and
        normalised on the device; any other batch as it is."""
        if "encoded_images" not in inputs:
            return inputs
        inputs = dict(inputs)
        inputs["pixel_values"] = self.image_decoder(
            inputs.pop("encoded_images"), inputs.pop("crops"), inputs.pop("flips"), self.args.device
        )
        return inputs

    def floating_point_ops(self, inputs) -> int:
        if "encoded_images" in inputs:  # count as the decoded batch that the model will see
            config = self.model.config
            shape = (len(inputs["encoded_images"]), config.num_channels, *config.image_hw)
            inputs = {"pixel_values": torch.empty(shape, device="meta")}
        return super().floating_point_ops(inputs)

    def _attention_kernels(self):
        backend = self.args.sdpa_backend
        return contextlib.nullcontext() if backend == "auto" else sdpa_kernel(SDPA_BACKENDS[backend])

    def _check_every_step(self) -> bool:
        mode = self.args.finite_loss_check
        return mode == "step" or (mode == "auto" and self.args.device.type == "cpu")

    def training_step(self, model, inputs, num_items_in_batch=None):
        with self._attention_kernels():
            loss = super().training_step(model, self.decoded(inputs), num_items_in_batch)
        if self._check_every_step():
            # Raised before the optimizer step: the weights and the last checkpoint on disk stay as they were.
            if not torch.isfinite(loss):
                self._raise_nonfinite(f"is {loss.item()} at step {self.state.global_step + 1}")
        else:  # accumulated on the device, read at logging and checkpoint steps (no per-step host sync)
            bad = ~torch.isfinite(loss.detach())
            self._nonfinite_loss = bad if self._nonfinite_loss is None else self._nonfinite_loss | bad
        return loss

    def _check_accumulated_loss(self) -> None:
        """Called on every process at logging, evaluation and checkpoint steps and at the last step (`FiniteLossCheck`):
        all stop together if any saw a bad loss."""
        if self._check_every_step() or self.state.global_step == self._checked_step:
            return
        bad = self._nonfinite_loss if self._nonfinite_loss is not None else torch.zeros((), dtype=torch.bool)
        bad = bad.to(self.args.device, torch.int32)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bool(bad):
            first, last = self._checked_step + 1, self.state.global_step
            self._raise_nonfinite(
                f"became non-finite at step {last}"
                if first == last
                else f"became non-finite between steps {first} and {last}"
            )
        self._checked_step = self.state.global_step

    def _raise_nonfinite(self, when: str):
        raise NonFiniteLossError(
            f"the training loss {when}; training stopped. The last checkpoint in {self.args.output_dir} is intact: "
            "resume it with --resume_from_checkpoint latest, e.g. with a lower --learning_rate / "
            "--base_learning_rate (applied from the resumed step on) or without fp16."
        )

    def prediction_step(self, model, inputs, *args, **kwargs):
        with self._attention_kernels():
            return super().prediction_step(model, self.decoded(inputs), *args, **kwargs)

    def evaluation_loop(self, dataloader, description, *args, metric_key_prefix: str = "eval", **kwargs):
        output = super().evaluation_loop(dataloader, description, *args, metric_key_prefix=metric_key_prefix, **kwargs)
        if self.monitor is not None and description == "Evaluation":  # not predict(); logged with the eval metrics
            model = self.accelerator.unwrap_model(self.model)
            encoder = getattr(model, "vit", model)
            forward = None
            if parameters_sharded(self.model_wrapped):  # the engine gathers what the encoder alone would miss
                wrapped = self.model_wrapped

                def forward(pixel_values):
                    return call_through(wrapped, encoder, pixel_values)

            output.metrics.update(
                self.monitor(
                    encoder,
                    self.args.device,
                    self.autocast_smart_context_manager,
                    metric_key_prefix,
                    forward=forward,
                    stop_check=stop_request.check_evaluation,
                )
            )
        return output

    def evaluate(self, *args, **kwargs):
        # Evaluation masks are drawn per example from eval_mask_seed (`get_eval_dataloader`), so eval_loss is
        # comparable from one evaluation to the next; anything else random is drawn from a fixed seed too, and the
        # training RNG state is restored afterwards.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.eval_mask_seed)
            return super().evaluate(*args, **kwargs)


class SegmentationTrainer(MAETrainer):
    """Evaluation as mmsegmentation scores it: each image is predicted at its own size (padding and the other
    images of the batch play no part; whole or sliding window) and its logits are resized (bilinear) back to its
    original annotation size (`segment_to_original_size`). `prediction_step` returns the loss at that size and
    class maps (B, H, W) padded with 255, so metrics need no argmax. Batches may carry `image_sizes` and
    `label_sizes` (`collate_segmentation(..., with_sizes=True)`); without them each image fills the batch."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = send_to_device(inputs, self.args.device)
        labels = inputs.get("labels")
        label_sizes = inputs.get("label_sizes")
        if labels is not None and label_sizes is None:
            label_sizes = torch.tensor([list(labels.shape[-2:])] * len(labels))
        segmenter = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.compute_loss_context_manager(), self._attention_kernels():
            # through `model`, which an engine may wrap: its forward gathers sharded parameters, the bare one would not
            logits = segment_to_original_size(model, inputs["pixel_values"], inputs.get("image_sizes"), label_sizes)
        loss = None
        if labels is not None:
            per_image = [
                segmenter.pixel_loss(l[None], labels[i : i + 1, : l.shape[-2], : l.shape[-1]])
                for i, l in enumerate(logits)
            ]
            loss = torch.stack(per_image).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        shape = labels.shape[-2:] if labels is not None else [max(l.shape[d] for l in logits) for d in (-2, -1)]
        predictions = torch.full((len(logits), *shape), segmenter.config.ignore_index, device=logits[0].device)
        for i, l in enumerate(logits):
            predictions[i, : l.shape[-2], : l.shape[-1]] = l.argmax(dim=0)
        if self.args.world_size > 1:  # the Trainer pads dim 1 alone across processes; maps differ in width too
            predictions = self.accelerator.pad_across_processes(predictions, dim=2, pad_index=-100)
            labels = None if labels is None else self.accelerator.pad_across_processes(labels, dim=2, pad_index=-100)
        return loss, predictions, labels
