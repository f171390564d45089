"""Parameter-efficient fine-tuning with the ``peft`` library: LoRA wrapping, merging, counting.

``model.peft=lora`` wraps the Hugging Face model of a text network (``net.model``) in a
``PeftModel``: the encoder's weights are frozen, low-rank adapters are added to the chosen linear
layers, and the classification head stays fully trainable (``modules_to_save``). The wrapped
model keeps the same forward signature, so the LightningModule, checkpoints (whose state-dict
keys then carry peft's ``base_model.model.`` prefix and ``lora_A``/``lora_B`` entries) and
``tunelab-eval``/``tunelab-predict`` (which rebuild the model from the stored config, adapters
included) need nothing special.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

#: The keys of ``model.lora`` and their defaults.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.1,
    "target_modules": ["query", "key", "value", "dense"],
}

#: Names of classification heads that must stay trainable, by model class.
_HEADS = ("classifier", "score", "head")


def head_module_names(model: nn.Module) -> list[str]:
    """The top-level children of ``model`` that form its classification head.

    ``classifier`` for ``AutoModelForSequenceClassification`` (BERT and most encoders),
    ``head`` for :class:`~tunelab.models.hf_mlp_head.EncoderMLPForSequenceClassification`.
    """
    names = [name for name, _ in model.named_children() if name in _HEADS]
    if not names:
        children = [name for name, _ in model.named_children()]
        raise ValueError(
            f"model.peft=lora: cannot find the classification head of {type(model).__name__} "
            f"(looked for {', '.join(_HEADS)} among its modules {children})"
        )
    return names


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] = ("query", "key", "value", "dense"),
    modules_to_save: Sequence[str] | None = None,
) -> PreTrainedModel:
    """Wrap a sequence-classification model in a LoRA ``PeftModel``.

    Args:
        model: a Hugging Face model whose forward takes ``input_ids``/``attention_mask`` and
            returns ``.logits``.
        r: rank of the adapters.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        target_modules: names (suffixes) of the linear layers that get adapters; for BERT
            ``query, key, value, dense`` is every linear layer of the encoder.
        modules_to_save: modules trained in full and saved with the adapter; default: the
            classification head (:func:`head_module_names`).

    Returns:
        The ``PeftModel`` (only adapters and head require grad).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save or head_module_names(model)),
    )
    peft_model = get_peft_model(model, config)
    # The name hf_adapter/ records for its base model; a model built from its config only (to
    # load a checkpoint into) has it in its config.
    name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if not name and hasattr(model, "base_model"):
        name = getattr(model.base_model, "name_or_path", "")
    peft_model.peft_config["default"].base_model_name_or_path = name or None
    return peft_model


def lora_settings(lora: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model.lora`` completed with :data:`LORA_DEFAULTS` (keys as :func:`apply_lora` takes)."""
    settings = {**LORA_DEFAULTS, **dict(lora or {})}
    unknown = sorted(set(settings) - set(LORA_DEFAULTS) - {"modules_to_save"})
    if unknown:
        raise ValueError(
            f"model.lora has unknown keys {unknown}; valid keys: {', '.join(LORA_DEFAULTS)}, "
            "modules_to_save"
        )
    return settings


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a ``PeftModel`` (without importing peft when it is not in use)."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_copy(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model with the adapters merged in; ``model`` itself is unchanged.

    ``merge_and_unload`` works in place, so it runs on a deep copy: training (or a later
    export) continues with the adapters as they were.
    """
    merged = copy.deepcopy(model).merge_and_unload()
    return merged.eval() if not model.training else merged


def parameter_counts(module: nn.Module) -> dict[str, Any]:
    """``{"trainable": ..., "total": ..., "trainable_percent": ...}`` of a module's parameters.

    Each parameter counts once, however many modules share it. Under LoRA the total includes
    the adapters and the frozen copy of the head that peft keeps beside the trained one.
    """
    params = {id(p): p for p in module.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "trainable": trainable,
        "total": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
    }
