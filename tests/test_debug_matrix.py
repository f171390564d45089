"""Every experiment with every debug preset (and ``tune=lr_find``) ends well on the real data.

The runs use the real embedded corpora and models (Fashion-MNIST, the 10,568 movie snippets,
all-MiniLM-L6-v2) with their real split sizes and batch shapes; only the number of steps is
limited, on top of what each preset does. A preset that breaks a stage after training (the
reports, the export, a limited evaluation) fails here, not in a user's first run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import needs_fashion_mnist
from tunelab.train import train

PRESETS = ["fast_dev_run", "limit", "overfit", "profile", "anomaly", "lr_find"]

EXPERIMENTS = {
    "cnn": ["experiment=cnn_fashion_mnist"],
    "bert_hf": ["experiment=bert_embedded"],
    "bert_mlp": ["experiment=bert_embedded", "model=bert_mlp"],
    "lora": ["experiment=bert_embedded", "model.peft=lora", "model.optimizer.lr=1e-3"],
}

# Fewer steps than the presets take (they are sized for a look at a real run), same shapes.
FEW_STEPS = {
    "fast_dev_run": [],
    "limit": [
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.max_epochs=1",
    ],
    "overfit": ["++trainer.overfit_batches=1", "++trainer.max_epochs=2"],
    "profile": ["++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1"],
    "anomaly": ["++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1"],
    "lr_find": [
        "++tune.num_training=4",
        "++trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
    ],
}


def _overrides(experiment: str, preset: str) -> list[str]:
    chosen = "tune=lr_find" if preset == "lr_find" else f"debug={preset}"
    return [
        *EXPERIMENTS[experiment],
        chosen,
        *FEW_STEPS[preset],
        "++trainer.limit_test_batches=1",
        "++trainer.num_sanity_val_steps=0",
        "logger=none",
        "extras.print_config=false",
    ]


@needs_fashion_mnist
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_every_experiment_with_every_debug_preset(compose_train, tmp_path, experiment, preset):
    out = tmp_path / "run"
    cfg = compose_train(*_overrides(experiment, preset), out=out)
    metrics = train(cfg)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    record = json.loads((out / "run_info.json").read_text())
    assert record["status"] == "completed"
    assert (out / "confusion_matrix.csv").is_file()
    if experiment != "cnn":
        config = json.loads((out / "hf_model" / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "positive"}
        assert (out / "errors.csv").is_file()
    # Limited evaluations say what they covered, and the reports cover exactly that.
    limited = saved["limited_evaluation"]["test"]
    assert limited["of"] == record["data"]["splits"]["test"] > limited["evaluated"]
    assert _matrix_total(out / "confusion_matrix.csv") == limited["evaluated"]
    if preset == "profile":
        assert (out / "fit-profile.txt").is_file()
    if preset == "lr_find":
        assert record["tune"]["mode"] == "lr_find" and (out / "tune.json").is_file()


def _matrix_total(path: Path) -> int:
    rows = path.read_text().strip().splitlines()[1:]
    return sum(int(v) for row in rows for v in row.split(",")[1:])
