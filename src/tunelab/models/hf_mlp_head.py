"""A pretrained encoder with an MLP classification head, as a Hugging Face model.

This file imports only torch and transformers: an exported model folder carries a copy of it, so
``transformers.pipeline("text-classification", model=DIR, trust_remote_code=True)`` loads the
model where tunelab is not installed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class EncoderMLPConfig(PretrainedConfig):
    """Config of :class:`EncoderMLPForSequenceClassification`.

    Args:
        encoder: the encoder's own config as a dict (with its ``model_type``).
        head_hidden_size: width of the head's hidden layer.
        head_dropout: dropout between the head's two layers.
        pooling: ``pooler`` (the encoder's pooled output, CLS otherwise), ``cls`` or ``mean``.
    """

    model_type = "tunelab-encoder-mlp"

    def __init__(
        self,
        encoder: dict | None = None,
        head_hidden_size: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "pooler",
        **kwargs,
    ) -> None:
        self.encoder = encoder or {}
        self.head_hidden_size = head_hidden_size
        self.head_dropout = head_dropout
        self.pooling = pooling
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        enc = dict(self.encoder)
        return AutoConfig.for_model(enc.pop("model_type"), **enc)


class EncoderMLPForSequenceClassification(PreTrainedModel):
    """Encoder → pooled output → Linear(hidden, 128) → ReLU → Dropout → Linear(128, classes)."""

    config_class = EncoderMLPConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True

    def __init__(self, config: EncoderMLPConfig, encoder: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.encoder = (
            encoder if encoder is not None else AutoModel.from_config(config.encoder_config())
        )
        hidden = self.encoder.config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(hidden, config.head_hidden_size),
            nn.ReLU(),
            nn.Dropout(config.head_dropout),
            nn.Linear(config.head_hidden_size, config.num_labels),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is m for m in self.head):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def _pool(self, out, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = getattr(out, "pooler_output", None)
        if self.config.pooling == "pooler" and pooled is not None:
            return pooled
        return out.last_hidden_state[:, 0]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        logits = self.head(self._pool(out, attention_mask))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


EncoderMLPConfig.register_for_auto_class()
EncoderMLPForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
