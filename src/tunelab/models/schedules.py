"""Learning-rate schedules with one signature: ``(optimizer, num_training_steps, ...)``.

Configs give them as ``_partial_`` objects; the LightningModule completes them with the number
of optimizer steps the trainer will take.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup


def linear_warmup_decay(
    optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.1
) -> LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then linear decay to zero."""
    return get_linear_schedule_with_warmup(
        optimizer, int(warmup_ratio * num_training_steps), num_training_steps
    )


def cosine_warmup(
    optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then cosine decay to zero."""
    return get_cosine_schedule_with_warmup(
        optimizer, int(warmup_ratio * num_training_steps), num_training_steps
    )
