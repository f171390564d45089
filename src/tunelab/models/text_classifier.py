"""LightningModule for text classification."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tunelab.models.classifier import ClassifierModule, layerwise_lr_scales
from tunelab.models.peft import (
    apply_lora,
    is_peft,
    lora_settings,
    make_adapter_portable,
    merged_copy,
)
from tunelab.utils.io import apply_umask_modes

log = logging.getLogger(__name__)


class TextClassifier(ClassifierModule):
    """Wraps a text network (:mod:`tunelab.models.text_nets`); batches are tokenized dicts.

    Takes every argument of :class:`~tunelab.models.classifier.ClassifierModule` (passed on
    unchanged), plus:

    Args:
        peft: ``None`` (train the network as configured) or ``"lora"``: wrap ``net.model`` with
            LoRA adapters (:func:`tunelab.models.peft.apply_lora`); only the adapters and the
            classification head train.
        lora: LoRA settings ``r``, ``alpha``, ``dropout``, ``target_modules`` (and optionally
            ``modules_to_save``), used when ``peft="lora"``.
        gradient_checkpointing: recompute the encoder's activations in the backward pass
            instead of keeping them (less memory, more compute).
        layerwise_lr_decay: ``1.0`` for one learning rate; ``d < 1`` gives the head ``lr``, the
            top encoder layer ``lr*d``, the next ``lr*d**2``, ..., the embeddings
            ``lr*d**(L+1)``.
    """

    def __init__(
        self,
        net: nn.Module,
        *args: Any,
        peft: Literal["lora"] | None = None,
        lora: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        layerwise_lr_decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if gradient_checkpointing:
            # Non-reentrant checkpointing: exact gradients, also for frozen embeddings and LoRA.
            net.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if peft == "lora":
            net.model = apply_lora(net.model, **lora_settings(lora))
        elif peft is not None:
            raise ValueError(f"model.peft={peft!r}: use null (full fine-tuning) or lora")
        super().__init__(net, *args, **kwargs)
        self.layerwise_lr_decay = layerwise_lr_decay

    def lr_scales(self) -> dict[str, float]:
        return layerwise_lr_scales(
            [name for name, _ in self.net.named_parameters()], self.layerwise_lr_decay
        )

    def split_batch(self, batch: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return inputs, batch.get("labels")

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.compile_net:
            # Batch size and padded length vary per batch: compile for symbolic sizes from the
            # start instead of once per shape (see tunelab.compile_report).
            for t in inputs.values():
                torch._dynamo.maybe_mark_dynamic(t, 0)
                torch._dynamo.maybe_mark_dynamic(t, 1)
        return self.net(**inputs)

    def export_pretrained(self, out_dir: Path, datamodule: Any) -> Path:
        """Write the model and tokenizer in Hugging Face format (``pipeline`` loads the folder).

        The folder is written under a temporary name and renamed into place, so a failed export
        (disk full, killed) never leaves a half model where ``out_dir`` was, nor loses the one
        there before. Under LoRA ``out_dir`` holds the model with the adapters merged (a plain
        transformers model: loading it needs no peft), and ``hf_adapter/`` beside it the adapter
        and head alone in peft's format (``PeftModel.from_pretrained(base, DIR)``; its
        ``base_model_name_or_path`` is portable, and :func:`tunelab.models.peft.adapter_base`
        turns it into what ``from_pretrained`` takes for ``base``).
        """
        out_dir = Path(out_dir)
        model = self.net.model
        if is_peft(model):
            self._export_dir(out_dir.with_name("hf_adapter"), model, datamodule)
            model = merged_copy(model)
        return self._export_dir(out_dir, model, datamodule)

    def _export_dir(self, out_dir: Path, model: nn.Module, datamodule: Any) -> Path:
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if self.num_classes == 2:  # read by tunelab, not applied by `transformers.pipeline`
            model.config.decision_threshold = self.decision_threshold
        try:
            model.save_pretrained(tmp)
            datamodule.tokenizer.save_pretrained(tmp)
            if is_peft(model):
                # The adapter names its base by hub name, pkg:// reference or relative path, not
                # the folder it was loaded from here (a site-packages path loads here only).
                make_adapter_portable(tmp, out_dir)
            apply_umask_modes(tmp)  # safetensors writes model.safetensors 0600
            if out_dir.exists():
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
        log.info("exported Hugging Face model to %s", out_dir)
        return out_dir


def _signature() -> inspect.Signature:
    """ClassifierModule's parameters and TextClassifier's own: what config validation checks."""
    base = inspect.signature(ClassifierModule.__init__).parameters.values()
    own = inspect.signature(TextClassifier.__init__).parameters.values()
    return inspect.Signature([*base, *(p for p in own if p.kind is p.KEYWORD_ONLY)])


TextClassifier.__init__.__signature__ = _signature()  # type: ignore[attr-defined]
