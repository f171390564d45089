"""notebooks/quickstart.ipynb runs top to bottom, offline, and shows what it says it shows."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, needs_fashion_mnist, shared_data_dir

nbformat = pytest.importorskip("nbformat", reason="pip install 'tunelab[notebook]'")
nbclient = pytest.importorskip("nbclient", reason="pip install 'tunelab[notebook]'")

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@needs_fashion_mnist
def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ROOT", str(tmp_path))  # the kernel inherits the environment
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(shared_data_dir()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CI", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves and confusion matrix of the CNN, the text model's
    runs = sorted((tmp_path / "outputs" / "quickstart").glob("*/*"))
    assert [r.name for r in runs] == ["cnn", "text"]
    cnn = json.loads((runs[0] / "metrics.json").read_text())
    assert cnn["test/acc"] > 0.7  # 10 classes, 2 epochs on 5,000 images
    text = json.loads((runs[1] / "metrics.json").read_text())
    assert text["test/acc"] > 0.55  # two balanced classes, 800 snippets once
    pipeline_out = "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in nb.cells[-2].outputs
    )
    assert "'label'" in pipeline_out and "'score'" in pipeline_out
