"""Memory savers and optimiser settings for the text models, each a config key.

``trainer.accumulate_grad_batches``, ``model.gradient_checkpointing``,
``model.net.freeze_embeddings``/``freeze_layers`` and ``model.layerwise_lr_decay``, each checked
on the real composed config, the tiny BERT fixture and real Lightning trainers.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import compose_cfg, tiny_text_overrides
from tunelab.train import prepare_data

# Dropout off: two runs that should compute the same thing then do, to float rounding.
NO_DROPOUT = [
    "model.net.config_overrides={hidden_dropout_prob:0.0,attention_probs_dropout_prob:0.0}",
    "model.net.head_dropout=0.0",
]


def _build(tiny_bert_dir, sentiment_csv, tmp_path, head="bert_hf", overrides=()):
    extra = list(overrides)
    if head == "bert_hf":  # the stock head has no head_dropout
        extra = [o for o in extra if not o.startswith("model.net.head_dropout")]
    cfg = compose_cfg(
        "train",
        [*tiny_text_overrides(tiny_bert_dir, sentiment_csv, head), "callbacks=none", *extra],
        tmp_path,
    )
    L.seed_everything(cfg.seed)
    dm = instantiate(cfg.data, _convert_="partial")
    prepare_data(dm, cfg)  # the fixture's classes size the model, as in train
    model = instantiate(cfg.model, _convert_="partial")
    return cfg, dm, model


def _fit(cfg, dm, model) -> L.Trainer:
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return trainer


# ---- gradient accumulation ---------------------------------------------------------------------


def test_accumulated_batches_give_the_same_update(tiny_bert_dir, sentiment_csv, tmp_path):
    """2 accumulated batches of 8 = batches of 16: same steps, same schedule, same weights."""
    # SGD: its update is linear in the gradient. (Adam divides each gradient entry by its own
    # magnitude, so entries near zero turn float rounding into visible differences.)
    common = [
        *NO_DROPOUT,
        "trainer.max_epochs=1",
        # A multiple of 16: Lightning divides every loss by accumulate_grad_batches, also in an
        # epoch's last, incomplete accumulation window, which batches of 16 would not halve.
        "data.max_train_samples=192",
        "data.group_by_length=false",
        "model.optimizer._target_=torch.optim.SGD",
        "model.optimizer.lr=0.5",
    ]
    runs = {}
    for name, batches in {
        "16": ["data.batch_size=16"],
        "8x2": ["data.batch_size=8", "trainer.accumulate_grad_batches=2"],
    }.items():
        cfg, dm, model = _build(
            tiny_bert_dir, sentiment_csv, tmp_path / name, "bert_hf", [*common, *batches]
        )
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = _fit(cfg, dm, model)
        runs[name] = (trainer, model, before)
    (t16, m16, b16), (t8, m8, b8) = runs["16"], runs["8x2"]
    assert all(torch.equal(b16[k], b8[k]) for k in b16)  # same start
    n_train = len(t16.datamodule.splits["train"])
    assert t16.global_step == t8.global_step == -(-n_train // 16)
    # The schedule is sized in optimizer steps: the linear decay reaches 0 at the last one.
    for t in (t16, t8):
        assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    changed = 0
    for k, v in m16.state_dict().items():
        torch.testing.assert_close(m8.state_dict()[k] - b8[k], v - b16[k], atol=1e-7, rtol=1e-4)
        changed += not torch.equal(v, b16[k])
    assert changed > 10


# ---- gradient checkpointing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "extra"),
    [("bert_hf", []), ("bert_mlp", []), ("bert_hf", ["model.peft=lora", "model.lora.dropout=0.0"])],
    ids=["bert_hf", "bert_mlp", "bert_hf-lora"],
)
def test_gradient_checkpointing_leaves_gradients_unchanged(
    head, extra, tiny_bert_dir, sentiment_csv, tmp_path
):
    grads, saved = {}, {}
    for gc in (False, True):
        cfg, dm, model = _build(
            tiny_bert_dir,
            sentiment_csv,
            tmp_path / str(gc),
            head,
            [*NO_DROPOUT, *extra, f"model.gradient_checkpointing={str(gc).lower()}"],
        )
        flags = [
            m.gradient_checkpointing
            for m in model.modules()
            if isinstance(getattr(m, "gradient_checkpointing", None), bool)
        ]
        assert flags and all(f == gc for f in flags), flags
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.val_dataloader()))
        model.train()
        inputs, labels = model.split_batch(batch)
        # Tensors autograd keeps for the backward pass outside checkpointed regions (inside them,
        # checkpointing's own hooks take over and keep only the layer inputs).
        kept: list[int] = []

        def pack(t: torch.Tensor, kept: list[int] = kept) -> torch.Tensor:
            kept.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        saved[gc] = sum(kept)
        grads[gc] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert saved[True] < 0.5 * saved[False], saved  # activations not kept: recomputed
    assert grads[True].keys() == grads[False].keys()
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, atol=1e-6, rtol=1e-5, msg=n)


# ---- freezing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "frozen"),
    [
        ("model.net.freeze_embeddings=true", ["embeddings."]),
        ("model.net.freeze_layers=1", ["embeddings.", "encoder.layer.0."]),
        ("model.net.freeze_layers=-1", ["embeddings.", "encoder.layer.", "pooler."]),
    ],
)
@pytest.mark.parametrize("head", ["bert_hf", "bert_mlp"])
def test_freezing_keeps_those_weights(
    head, setting, frozen, tiny_bert_dir, sentiment_csv, tmp_path
):
    cfg, dm, model = _build(
        tiny_bert_dir, sentiment_csv, tmp_path, head, [setting, "+trainer.max_steps=3"]
    )
    names = {n for n, _ in model.named_parameters()}
    should_freeze = {n for n in names if any(f in n for f in frozen)}
    assert should_freeze
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == should_freeze
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit(cfg, dm, model)
    in_optimizer = {id(p) for g in model.optimizers().optimizer.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        if n in should_freeze:
            assert torch.equal(p, before[n]), n
            assert id(p) not in in_optimizer, n
    head_names = [n for n in names - should_freeze if "classifier" in n or ".head." in n]
    assert head_names and all(
        not torch.equal(dict(model.named_parameters())[n], before[n])
        for n in head_names
        if n.endswith("weight")
    )


# ---- layer-wise learning-rate decay ------------------------------------------------------------


def _expected_scale(name: str, decay: float, layers: int = 2) -> float:
    if "embeddings." in name:
        return decay ** (layers + 1)
    for i in range(layers):
        if f".layer.{i}." in name:
            return decay ** (layers - i)
    return 1.0  # head and pooler


@pytest.mark.parametrize("head", ["bert_hf", "bert_mlp"])
def test_layerwise_lr_decay_per_group_lrs(head, tiny_bert_dir, sentiment_csv, tmp_path):
    lr, decay = 1e-3, 0.5
    cfg, dm, model = _build(
        tiny_bert_dir,
        sentiment_csv,
        tmp_path,
        head,
        [f"model.optimizer.lr={lr}", f"model.layerwise_lr_decay={decay}", "model.scheduler=null"],
    )
    optimizer = model.configure_optimizers()
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    seen = set()
    for name, p in model.net.named_parameters():
        g = group_of[id(p)]
        scale = _expected_scale(name, decay)
        seen.add(scale)
        assert g["lr"] == lr * scale, (name, g["lr"])
        assert g["weight_decay"] == (0.01 if p.ndim >= 2 else 0.0), name
    assert seen == {1.0, 0.5, 0.25, 0.125}  # head, top layer, first layer, embeddings
    assert len(optimizer.param_groups) == 8  # 4 learning rates x (decay, no decay)

    # The configured warmup-decay schedule scales every group alike: each keeps its ratio.
    schedule = compose_cfg("train", ["experiment=bert_embedded"], tmp_path / "s").model.scheduler
    sched = instantiate(schedule)(optimizer, num_training_steps=10)
    for _ in range(3):
        optimizer.step()
        sched.step()
    head_lr = optimizer.param_groups[0]["lr"]
    assert 0 < head_lr < lr
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(head_lr * g.get("lr_scale", 1.0), rel=1e-12)


def test_no_layerwise_decay_keeps_two_groups(tiny_bert_dir, sentiment_csv, tmp_path):
    _, _, model = _build(tiny_bert_dir, sentiment_csv, tmp_path, overrides=["model.scheduler=null"])
    groups = model.configure_optimizers().param_groups
    assert len(groups) == 2 and "lr_scale" not in groups[0] and groups[1]["weight_decay"] == 0.0
    assert {g["lr"] for g in groups} == {model.optimizer_factory.keywords["lr"]}


class _Crash(L.Callback):
    """Fails the run just before training batch ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            raise RuntimeError("crash for the test")


def test_resume_in_the_middle_of_an_accumulation_window_is_exact(
    tiny_bert_dir, sentiment_csv, tmp_path
):
    """A run that dies halfway through an accumulation window resumes from the checkpoint of
    the last optimizer step and ends with the weights of an uninterrupted run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    common = [
        "data.batch_size=8",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_epochs=1",
        "data.max_train_samples=96",
    ]

    def run(name: str, crash_at: int | None = None, ckpt_path=None):
        cfg, dm, model = _build(tiny_bert_dir, sentiment_csv, tmp_path / name, overrides=common)
        last = ModelCheckpoint(
            dirpath=tmp_path / name, save_top_k=0, save_last=True, every_n_train_steps=1
        )
        callbacks = [last] + ([_Crash(crash_at)] if crash_at is not None else [])
        trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model

    whole = run("whole")
    with pytest.raises(RuntimeError, match="crash for the test"):
        run("part1", crash_at=7)  # batches 0-6 done: 3 optimizer steps and half a window
    saved = torch.load(tmp_path / "part1" / "last.ckpt", weights_only=False)
    # written after batch 5, the end of the 3rd window; batch 6's half window is not in it
    assert saved["global_step"] == 3
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["processed"] == 6
    resumed = run("part2", ckpt_path=tmp_path / "part1" / "last.ckpt")
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
