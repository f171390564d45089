"""The LightningModule logic shared by the image and text classifiers."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from tunelab.checkpoint import KEY as CKPT_KEY
from tunelab.data.resumable import run_seed
from tunelab.data.sampling import balanced_class_weights
from tunelab.models.metrics import (
    build_metrics,
    imbalance_metrics,
    scores_for_metrics,
    set_threshold,
)
from tunelab.models.peft import parameter_counts
from tunelab.models.threshold import Threshold, best_f1_threshold, parse_threshold

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]


def planned_steps(trainer: L.Trainer) -> int:
    """How many optimizer steps the trainer will take, for sizing a schedule.

    ``trainer.estimated_stepping_batches`` sets up the train loader early, before a resumed run
    restores its loop state, and the loader's saved position is then dropped (lightning#20550):
    a mid-epoch resume would replay the epoch from its start. Discarding that early loader makes
    the fit loop set the data up again after the restore, as it does without a schedule.
    """
    total = int(trainer.estimated_stepping_batches)
    trainer.fit_loop._combined_loader = None  # lightning#20550; see the docstring
    return total


_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def layerwise_lr_scales(names: Sequence[str], decay: float) -> dict[str, float]:
    """Learning-rate factors for layer-wise decay over a transformer's parameter names.

    With ``L`` encoder layers (found as ``...layer.<i>...`` in the names), layer ``i`` gets
    ``decay ** (L - i)`` (the top layer ``decay``), the embeddings ``decay ** (L + 1)`` and
    everything else (the head, the pooler) 1. ``decay=1`` gives every parameter 1.
    """
    indices = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    depth = max(indices.values(), default=-1) + 1
    scales = {}
    for n in names:
        if n in indices:
            scales[n] = decay ** (depth - indices[n])
        elif "embeddings." in n:
            scales[n] = decay ** (depth + 1)
        else:
            scales[n] = 1.0
    return scales


def batch_seed(seed: int, batch_index: int, rank: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, global batch index, rank)."""
    return (seed * 1_000_003 + batch_index * 7_919 + rank * 104_729) % (2**63 - 1)


class ClassifierModule(L.LightningModule):
    """Trains a network that maps a batch's inputs to class logits with cross-entropy.

    Subclasses say how a batch splits into network inputs and labels (``split_batch``).

    Args:
        net: the network; returns logits ``(batch, num_classes)``.
        num_classes: number of classes (from the data config).
        optimizer: optimizer factory taking ``params`` (a ``_partial_`` config).
        scheduler: optional factory ``(optimizer, num_training_steps)`` (a ``_partial_`` config),
            stepped every optimizer step.
        compile: compile ``net`` in place with ``torch.compile`` (state-dict keys unchanged).
        compile_mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
        compile_backend: ``torch.compile`` backend (``inductor``; ``aot_eager`` or ``eager`` to
            tell a compiler problem from a model problem).
        class_weights: weights of the classes in the training loss: ``None`` (equal),
            ``"balanced"`` (``n / (k * count_c)`` from the training labels, read from the data
            module's ``class_counts()`` when fitting) or one weight per class. Validation and
            test losses stay unweighted, comparable across runs.
        decision_threshold: binary tasks: predict class 1 where ``P(1) >=`` this (``0.5``: the
            most probable class), or ``"auto"``: 0.5 until ``tunelab-train`` chooses the
            validation-F1-best threshold after training (:meth:`choose_threshold`). Checkpoints
            store the threshold in use.
        label_names: the class names, index = label id (from the data config; the ids as text
            when None). Per-class metrics, reports and predictions use them.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        compile: bool = False,
        compile_mode: str = "default",
        compile_backend: str = "inductor",
        class_weights: Sequence[float] | Literal["balanced"] | None = None,
        decision_threshold: Threshold = 0.5,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        # `from_pretrained` returns modules in eval mode, and Lightning keeps each module's mode:
        # without this, dropout would be off during fine-tuning.
        self.net = net.train()
        self.num_classes = num_classes
        names = [str(n) for n in label_names] if label_names else None
        if names is not None and len(names) != num_classes:
            raise ValueError(
                f"model.label_names has {len(names)} names {names} for {num_classes} classes; "
                "it follows data.label_names: give one name per class"
            )
        self.label_names = names or [str(i) for i in range(num_classes)]
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_net = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.train_metrics = build_metrics(num_classes, "train/")
        self.val_metrics = build_metrics(num_classes, "val/")
        self.test_metrics = build_metrics(num_classes, "test/")
        threshold, self.auto_threshold = parse_threshold(decision_threshold)
        if num_classes != 2 and (self.auto_threshold or threshold != 0.5):
            raise ValueError(
                f"model.decision_threshold={decision_threshold} applies to binary tasks only "
                f"(data.num_classes=2, not {num_classes}); drop it"
            )
        self.decision_threshold = threshold
        self.balanced_weights = class_weights == "balanced"
        weights = None
        if class_weights is not None and not self.balanced_weights:
            if isinstance(class_weights, str) or len(class_weights) != num_classes:
                raise ValueError(
                    f"model.class_weights={class_weights!r}: use null, balanced, or a list of "
                    f"{num_classes} weights (one per class)"
                )
            weights = torch.tensor([float(w) for w in class_weights])
        # Not saved in checkpoints (recomputed when fitting); a buffer so it follows the device.
        self.register_buffer("class_weight", weights, persistent=False)
        # Class probabilities and labels of the latest val/test epoch, for thresholds, curves,
        # confusion matrices and error tables (see `collected`).
        self._collected: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def decision_threshold(self) -> float:
        """The threshold on ``P(class 1)`` the binary metrics and predictions use."""
        return self._decision_threshold

    @decision_threshold.setter
    def decision_threshold(self, value: float) -> None:
        self._decision_threshold = float(value)
        for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
            set_threshold(metrics, value)

    def choose_threshold(self) -> tuple[float, float]:
        """Use the threshold that maximises F1 on the latest validation epoch (binary tasks).

        Returns:
            ``(threshold, validation F1 at it)``.
        """
        probs, labels = self.collected("val")
        threshold, f1 = best_f1_threshold(probs[:, 1], labels)
        self.decision_threshold = threshold
        return threshold, f1

    def on_fit_start(self) -> None:
        if not self.balanced_weights:
            return
        counts = getattr(self.trainer.datamodule, "class_counts", None)
        if counts is None:
            raise ValueError(
                "model.class_weights=balanced needs a data module with class_counts() (the "
                "tunelab ones); pass the weights as a list instead (model.class_weights=[...])"
            )
        weights = torch.tensor(balanced_class_weights(counts()), dtype=torch.float32)
        self.class_weight = weights.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.num_classes == 2:  # beside the configs that ConfigInCheckpoint stores
            checkpoint.setdefault(CKPT_KEY, {})["decision_threshold"] = self.decision_threshold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = (checkpoint.get(CKPT_KEY) or {}).get("decision_threshold")
        if stored is not None and self.num_classes == 2:
            self.decision_threshold = stored

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> ClassifierModule:
        """The model a ``tunelab-train`` checkpoint holds, from the checkpoint alone.

        Lightning's own version rebuilds a module from ``save_hyperparameters``, which would
        pickle the network object into every checkpoint; a tunelab checkpoint carries the
        model's config instead, so this is :func:`tunelab.load_model`, checked to be a ``cls``.
        ``kwargs`` override model config values (e.g. ``decision_threshold=0.3``).
        """
        from tunelab.loading import load_model

        if hparams_file is not None or strict is False:
            raise ValueError(
                "tunelab checkpoints carry their own config: load_from_checkpoint takes no "
                "hparams_file and always loads every weight (strict)"
            )
        model = load_model(checkpoint_path, device=map_location or "cpu", **kwargs)
        if not isinstance(model, cls):
            raise TypeError(
                f"{checkpoint_path} holds a {type(model).__name__}, not a {cls.__name__}; "
                f"use {type(model).__name__}.load_from_checkpoint or tunelab.load_model"
            )
        return model

    # subclasses -------------------------------------------------------------------------------
    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """Return ``(inputs, labels)``; labels may be ``None`` when predicting."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.net(inputs)

    # randomness --------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Seed the RNG of each training batch from ``(seed, batch index, rank)``.

        Dropout and on-device augmentation then depend only on which batch this is, so a run
        resumed from any checkpoint continues with exactly the random numbers an uninterrupted
        run would draw, with no RNG state to save. Runs before the batch is moved to the device
        (where the data module augments it).
        """
        trainer = self._trainer
        if trainer is not None and trainer.training:
            index = trainer.fit_loop.epoch_loop.batch_progress.total.ready
            seed = batch_seed(run_seed(), index, trainer.global_rank)
            # The CPU generator and this device's: `torch.manual_seed` would also check for and
            # seed every CUDA, MPS and XPU device, a cost paid on every step.
            torch.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed)
        return batch

    # steps ------------------------------------------------------------------------------------
    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        inputs, labels = self.split_batch(batch)
        logits = self(inputs)
        weight = self.class_weight if stage == "train" else None
        loss = F.cross_entropy(logits.float(), labels, weight=weight)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(scores_for_metrics(logits), labels)
        if stage != "train":
            probs = logits.detach().float().softmax(dim=-1)
            self._collected.setdefault(stage, []).append((probs.cpu(), labels.detach().cpu()))
        # Averaged over DDP processes for val/test (once per epoch); train shows rank 0's loss
        # without a collective every step.
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=stage != "train",
        )
        if stage != "train":
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        # Training metrics are updated every step but logged once, at the epoch's end: a
        # `log_dict` per step cost more than the CNN's own step on CPU (bench/RESULTS.md).
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())  # synced across DDP processes by torchmetrics
        self.train_metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self._collected["val"] = []

    def on_test_epoch_start(self) -> None:
        self._collected["test"] = []

    def on_validation_epoch_end(self) -> None:
        self._gather_collected("val")
        self._log_imbalance_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._gather_collected("test")
        self._log_imbalance_metrics("test")

    def _log_imbalance_metrics(self, stage: str) -> None:
        """Macro-F1, per-class scores and (binary) PR-AUC / ROC-AUC of the whole epoch.

        Computed from :meth:`collected`, which every process holds in full (also under DDP), so
        the values need no further sync.
        """
        probs, labels = self.collected(stage)
        if not len(labels) or (self._trainer is not None and self.trainer.sanity_checking):
            return
        values = imbalance_metrics(probs, labels, self.decision_threshold, self.label_names)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, on_epoch=True)

    def _gather_collected(self, stage: str) -> None:
        """Under DDP, give every process all of the epoch's outputs, in the loader's order.

        ``DistributedSampler`` (no shuffling for val/test) hands rank ``r`` the examples
        ``r, r + R, r + 2R, ...``, padded with repeats so that all ranks get as many: stacking the
        ranks' outputs and reading them column-wise restores the order; the padding is cut.
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1 or not self._collected.get(stage):
            return
        probs, labels = self.collected(stage)
        gathered_p = self.all_gather(probs.to(self.device))  # (R, N, C)
        gathered_l = self.all_gather(labels.to(self.device))  # (R, N)
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        total = len(loader.dataset) if loader is not None else gathered_l.numel()
        probs = gathered_p.transpose(0, 1).reshape(-1, probs.shape[-1])[:total]
        labels = gathered_l.transpose(0, 1).reshape(-1)[:total]
        self._collected[stage] = [(probs.cpu(), labels.cpu())]

    def collected(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (N, classes), labels (N,))`` of the latest ``val`` or ``test`` epoch, in the
        order of that stage's loader (all of it also under DDP: see ``_gather_collected``)."""
        parts = self._collected.get(stage) or []
        if not parts:
            return torch.empty(0, self.num_classes), torch.empty(0, dtype=torch.long)
        probs, labels = zip(*parts, strict=True)
        return torch.cat(probs), torch.cat(labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        inputs, _ = self.split_batch(batch)
        return self(inputs).float().softmax(dim=-1)

    # setup ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.compile_net and not getattr(self, "_compiled", False):
            # In place: the module keeps its own state-dict keys (no `_orig_mod.` prefix), so
            # compiled and eager checkpoints are interchangeable.
            mode = None if self.compile_backend != "inductor" else self.compile_mode
            self.net.compile(mode=mode, backend=self.compile_backend)
            self._compiled = True

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate factor per parameter name of ``net`` (subclasses: layer-wise decay)."""
        return {}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices and conv kernels only, not on biases and norm weights.

        Parameters with a learning-rate factor other than 1 (:meth:`lr_scales`) get groups of
        their own, marked ``lr_scale``; :meth:`configure_optimizers` multiplies their lr by it.
        Groups go from the largest factor down, with decay before no-decay for each.
        """
        scales = self.lr_scales()
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.net.named_parameters():
            if p.requires_grad:
                groups.setdefault((scales.get(name, 1.0), p.ndim >= 2), []).append(p)
        out = []
        for scale, decay in sorted(groups, key=lambda k: (-k[0], not k[1])):
            group: dict[str, Any] = {"params": groups[scale, decay]}
            if not decay:
                group["weight_decay"] = 0.0
            if scale != 1.0:
                group["lr_scale"] = scale
            out.append(group)
        return out or [{"params": []}]

    def parameter_counts(self) -> dict[str, Any]:
        """Trainable and total parameters of ``net`` (logged and recorded by ``tunelab-train``)."""
        return parameter_counts(self.net)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:  # layer-wise decay; before the scheduler reads lr
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        total = planned_steps(self.trainer)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
