"""The course walkthrough notebook: it runs top to bottom (a real kernel, real MNIST), and the outputs committed
with it, for people who read it on the web, were produced from its current sources by `make notebook`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "course_walkthrough.ipynb"
MODELS = ("mlp", "baseline_cnn", "course_cnn", "fast_cnn")
MAX_KB = 1500  # outputs stay small: text and the plots at their saved size


def runner():
    """examples/run_notebook.py, the tool that executes the committed copy (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location("run_notebook", EXAMPLES / "run_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_outputs_come_from_these_sources():
    """If a cell changes, `make notebook` must run again: stale outputs would show what the code no longer does."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata["digitpi"]["sources_sha256"] == runner().sources_digest(notebook), \
        "the notebook's sources changed since its outputs were made: run `make notebook`"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "EPOCHS = " in code[0].source  # the setting is at the top
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # top to bottom, once
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert not [out for out in outputs if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    text = outputs_text(notebook)
    assert "2 epoch(s) on 60,000 training images" in text  # the defaults, on the whole training set
    assert len(re.findall(r"^Epoch 2/2 - \d+ steps in .* - val_accuracy: 0\.\d{4}$", text, re.M)) == len(MODELS)
    assert text.count("The accuracy on test data is") == len(MODELS) and "\r" not in text
    assert NOTEBOOK.stat().st_size < MAX_KB * 1024


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/markdown", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(mnist_dir, tmp_path, monkeypatch):
    # one epoch on a slice of the training set: this proves every cell runs, not what 30 epochs reach
    monkeypatch.setenv("DIGITPI_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("DIGITPI_NOTEBOOK_TRAIN_IMAGES", "3000")
    monkeypatch.setenv("DIGITPI_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("DIGITPI_DATA_DIR", str(mnist_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    text = outputs_text(notebook)
    last_epochs = re.findall(r"^Epoch 1/1 - \d+ steps in \d+\.\d s - total [\d:]+( s)? - loss: ", text, re.M)
    assert len(last_epochs) == len(MODELS)  # progress, one line per epoch where no widget can be drawn
    assert re.search(r"scan\.png: \d \(\d+\.\d %\), true 7$", text, re.M)  # digitpi.read, one call from a file
    assert text.count("The final loss on test data is") == len(MODELS)
    assert text.count("The accuracy on test data is") == len(MODELS)
    assert "Total params:" in text and "Non-trainable params: 224" in text and "one-hot loss" in text
    assert "| model | parameters |" in text and all(f"| {name} |" in text for name in MODELS)  # the conclusion
    images = [cell for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) >= 2 + 2 * len(MODELS)  # the grid, the Pi's predictions, two plots per model

    runs = tmp_path / "runs"
    accuracy = {name: json.loads((runs / name / "metrics.json").read_text())["test_accuracy"] for name in MODELS}
    # 2,400 images, one epoch (5 Adam steps for the course recipe's batch of 512): course_cnn has not
    # left chance level yet, the others must have learned something (measured: mlp 65 %, fast_cnn 88 %)
    assert accuracy["mlp"] > 0.4 and accuracy["fast_cnn"] > 0.6
    card = json.loads((runs / "fast_cnn-export" / "model.json").read_text())
    assert abs(card["test_accuracy"]["fp32"] - accuracy["fast_cnn"]) < 1e-3  # the Pi's model is the trained one
