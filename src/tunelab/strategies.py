"""Distributed strategies that need more than a ``_target_`` in YAML (``conf/strategy/``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from torch import nn


def _module_class(path: str) -> type[nn.Module] | None:
    """The class at dotted ``path``, or None when its package is missing (optional models)."""
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"strategy.strategy.wrap_layers: {path} is not an nn.Module class")
    return cls


def fsdp_strategy(
    wrap_layers: Sequence[str],
    activation_checkpointing: bool = True,
    sharding_strategy: str = "FULL_SHARD",
    state_dict_type: str = "full",
    cpu_offload: bool = False,
):
    """Lightning's ``FSDPStrategy`` with each of ``wrap_layers`` an FSDP unit.

    Args:
        wrap_layers: dotted class paths of the blocks to shard as units (transformer layers).
        activation_checkpointing: recompute those blocks' activations in the backward pass.
        sharding_strategy: ``FULL_SHARD``, ``SHARD_GRAD_OP``, ``HYBRID_SHARD`` or ``NO_SHARD``.
        state_dict_type: ``full`` (one consolidated checkpoint, written by rank 0) or
            ``sharded`` (one shard per rank; faster to save, needs the same world size to load).
        cpu_offload: keep parameters on the CPU between uses (slower; for models that do not
            fit otherwise).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    classes = {c for c in map(_module_class, wrap_layers) if c is not None}
    if not classes:
        raise ValueError(
            f"strategy.strategy.wrap_layers={list(wrap_layers)}: none of these classes could be "
            "imported; list the transformer block class of your model (e.g. "
            "transformers.models.bert.modeling_bert.BertLayer)"
        )
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
    )
