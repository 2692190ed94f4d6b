"""Execute the course notebook in place, so that its committed outputs show someone reading it on the web.

`make notebook` runs this: a real kernel (nbclient, as tests/test_notebook.py runs it in CI) with the notebook's
defaults (2 epochs on all 60,000 training images), from the repository's root, so its run folders go to
runs/notebook, which git ignores. The digest of the sources that ran is stored in the notebook's metadata;
tests/test_notebook.py compares it with the sources, so outputs that no longer match them fail CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

NOTEBOOK = Path(__file__).with_name("course_walkthrough.ipynb")
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("DIGITPI_NOTEBOOK_EPOCHS", "DIGITPI_NOTEBOOK_TRAIN_IMAGES", "DIGITPI_NOTEBOOK_OUT")  # the defaults run


def sources_digest(notebook) -> str:
    """SHA-256 of every cell's type and source, in order: what the outputs were produced from."""
    cells = [[cell["cell_type"], cell["source"]] for cell in notebook["cells"]]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def main() -> None:
    import nbclient
    import nbformat

    for name in SETTINGS:
        os.environ.pop(name, None)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    notebook.metadata["digitpi"] = {"sources_sha256": sources_digest(notebook),
                                    "executed": time.strftime("%Y-%m-%d")}
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed {NOTEBOOK} in {time.perf_counter() - started:.0f} s; {NOTEBOOK.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
