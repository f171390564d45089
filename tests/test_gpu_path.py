"""The GPU hot path's switches, checked on CPU where they can be: recompiles bounded and
reported under dynamic padding, image data kept on the device, the accelerator configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers import NEG, POS, needs_fashion_mnist, tiny_text_overrides
from tunelab.train import train

needs_cc = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="torch.compile on CPU needs a C compiler",
)


@needs_cc
def test_compiled_text_model_stops_recompiling_after_warmup(
    compose_train, tiny_bert_dir, sentiment_csv, tmp_path
):
    """Batches of many padded lengths (8..32) and a smaller last batch: the dynamic batch and
    sequence dimensions compile once per mode (train, eval), then never again; the run records
    the counts. The `eager` backend runs dynamo's real guards and recompiles without inductor's
    code generation (slow on 2 cores); the guards do not depend on the backend."""
    torch._dynamo.reset()
    cfg = compose_train(
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "accelerator.compile=true",
        "accelerator.compile_backend=eager",
        "trainer.max_epochs=2",
        "data.batch_size=20",  # 192 training rows: 9 full batches and one of 12
        "data.group_by_length=false",
        out=tmp_path / "run",
    )
    train(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    report = info["compile"]
    assert report["compilations"] >= 2  # the train and the eval graph, at least
    assert report["compilations_after_warmup"] == 0, report["reasons_after_warmup"]
    assert report["compilations"] <= 4, report


@needs_fashion_mnist
def test_on_device_data_gives_the_same_run(compose_train, tmp_path):
    """`data.on_device=true` moves indices through the loader and gathers on the device; on
    CPU it must train exactly like the host-tensor path (same batches, same numbers)."""
    tiny = [
        "data.max_train_samples=512",
        "data.max_eval_samples=256",
        "data.batch_size=64",
        "data.augment=true",  # augmentation draws from the per-batch seeded RNG on the device
        "trainer.max_epochs=1",
        "logger=none",
    ]
    results = {}
    for on_device in (False, True):
        out = tmp_path / f"on_device_{on_device}"
        cfg = compose_train(*tiny, f"data.on_device={on_device}", out=out)
        results[on_device] = train(cfg)
        state = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
        results[f"w{on_device}"] = state
    assert results[True]["test/acc"] == results[False]["test/acc"]
    assert results[True]["val/loss"] == pytest.approx(results[False]["val/loss"], rel=1e-6)
    a, b = results["wFalse"], results["wTrue"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_accelerator_configs_set_the_hot_path(compose_train):
    gpu = compose_train("accelerator=gpu")
    assert gpu.trainer.precision == "bf16-mixed"
    assert gpu.model.compile and gpu.model.compile_backend == "inductor"
    assert gpu.model.optimizer.fused and gpu.data.on_device and gpu.data.pin_memory
    assert gpu.accelerator.matmul_precision == "high"  # TF32
    cpu = compose_train("accelerator=cpu")
    assert cpu.trainer.precision == "32-true" and not cpu.model.compile
    assert not cpu.data.on_device and cpu.model.optimizer.fused is False
    text = compose_train("experiment=bert_embedded", "accelerator=gpu")
    assert text.data.num_workers == 4 and text.model.compile
    assert compose_train("accelerator=gpu", "accelerator.compile=false").model.compile is False
    assert (
        compose_train("accelerator=gpu", "accelerator.compile_mode=max-autotune").model.compile_mode
        == "max-autotune"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_bf16_run_and_eager_reload(compose_train, tiny_bert_dir, sentiment_csv):
    cfg = compose_train(
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "accelerator=gpu",
        "trainer.max_epochs=2",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5
    from tunelab.checkpoint import load_checkpoint, model_from_checkpoint

    path = f"{cfg.paths.output_dir}/checkpoints/best.ckpt"
    model = model_from_checkpoint(load_checkpoint(path), path, compile=False)
    assert not [k for k in model.state_dict() if "_orig_mod" in k]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU")
def test_fsdp_checkpoint_is_consolidated_and_exported(compose_train, tiny_bert_dir, sentiment_csv):
    from transformers import pipeline

    cfg = compose_train(
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "accelerator=gpu",
        "strategy=fsdp",
        f"strategy.devices={min(torch.cuda.device_count(), 2)}",
        "trainer.max_epochs=1",
    )
    train(cfg)
    out = cfg.paths.output_dir
    state = torch.load(f"{out}/checkpoints/best.ckpt", weights_only=False)["state_dict"]
    assert any(k.endswith("word_embeddings.weight") for k in state)  # one full state dict
    clf = pipeline("text-classification", model=f"{out}/hf_model")
    assert clf("a wonderful film")[0]["label"] in (NEG, POS)
