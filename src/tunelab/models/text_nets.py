"""Text classification networks: a stock Hugging Face head, or an encoder with an MLP head.

Both wrap a Hugging Face ``PreTrainedModel`` in ``.model`` and map ``(input_ids,
attention_mask)`` to logits, so the LightningModule treats them alike and both export with
``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from tunelab.models.hf_mlp_head import EncoderMLPConfig, EncoderMLPForSequenceClassification
from tunelab.models.pretrained import resolve_pretrained


def _labels(num_classes: int, label_names: Sequence[str] | None) -> dict:
    names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} label names {names} for num_classes={num_classes}")
    return {
        "num_labels": num_classes,
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def freeze(model: PreTrainedModel, embeddings: bool = False, layers: int = 0) -> None:
    """Freeze the embeddings and/or the first ``layers`` encoder layers (-1: the whole encoder)."""
    base = model.base_model
    if layers < 0:
        base.requires_grad_(False)
        return
    if embeddings or layers > 0:
        base.embeddings.requires_grad_(False)
    if layers > 0:
        stack = getattr(getattr(base, "encoder", None), "layer", None) or getattr(
            getattr(base, "transformer", None), "layer", None
        )
        if stack is None:
            raise ValueError(
                f"model.net.freeze_layers: cannot find the layers of {type(base).__name__}"
            )
        for layer in list(stack)[:layers]:
            layer.requires_grad_(False)


class _TextNet(nn.Module):
    model: PreTrainedModel

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class HFSequenceClassifier(_TextNet):
    """``AutoModelForSequenceClassification``: the encoder with its stock classification head.

    Args:
        pretrained: hub name, folder, or ``pkg://package/folder`` of the pretrained encoder.
        num_classes: number of classes.
        label_names: class names (stored as ``id2label`` for export).
        load_weights: load the pretrained weights (False: architecture only, e.g. to load a
            checkpoint into).
        freeze_embeddings: freeze the embedding layer.
        freeze_layers: freeze the first N encoder layers (-1: the whole encoder).
        config_overrides: extra config values (e.g. a tiny ``num_hidden_layers`` for tests).
    """

    def __init__(
        self,
        pretrained: str,
        num_classes: int,
        label_names: Sequence[str] | None = None,
        load_weights: bool = True,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        path = resolve_pretrained(pretrained)
        config = AutoConfig.from_pretrained(
            path, **_labels(num_classes, label_names), **(config_overrides or {})
        )
        if load_weights:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, config=config)
        else:
            self.model = AutoModelForSequenceClassification.from_config(config)
        freeze(self.model, freeze_embeddings, freeze_layers)


class EncoderMLPClassifier(_TextNet):
    """A pretrained encoder (``AutoModel``) + MLP head ``hidden → head_hidden_size → classes``.

    Args:
        pretrained: hub name, folder, or ``pkg://package/folder`` of the pretrained encoder.
        num_classes: number of classes.
        label_names: class names (stored as ``id2label`` for export).
        head_hidden_size: width of the head's hidden layer.
        head_dropout: dropout in the head.
        pooling: ``pooler``, ``cls`` or ``mean`` (see :class:`EncoderMLPConfig`).
        load_weights: load the encoder's pretrained weights.
        freeze_embeddings: freeze the embedding layer.
        freeze_layers: freeze the first N encoder layers (-1: the whole encoder).
        config_overrides: extra encoder config values (e.g. a tiny ``num_hidden_layers``).
    """

    def __init__(
        self,
        pretrained: str,
        num_classes: int,
        label_names: Sequence[str] | None = None,
        head_hidden_size: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "pooler",
        load_weights: bool = True,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("pooler", "cls", "mean"):
            raise ValueError(f"model.net.pooling={pooling!r}: use pooler, cls or mean")
        path = resolve_pretrained(pretrained)
        enc_config = AutoConfig.from_pretrained(path, **(config_overrides or {}))
        encoder = (
            AutoModel.from_pretrained(path, config=enc_config)
            if load_weights
            else AutoModel.from_config(enc_config)
        )
        config = EncoderMLPConfig(
            encoder=enc_config.to_dict(),
            head_hidden_size=head_hidden_size,
            head_dropout=head_dropout,
            pooling=pooling,
            **_labels(num_classes, label_names),
        )
        self.model = EncoderMLPForSequenceClassification(config, encoder=encoder)
        freeze(self.model, freeze_embeddings, freeze_layers)
