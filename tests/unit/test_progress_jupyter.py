"""``progress=True`` in Jupyter: a notebook executed in a real IPython kernel (nbclient), its
widgets' final state saved, as a notebook front end would show it. tqdm.auto must pick the
notebook bar (an ipywidgets progress bar, not text on stderr), and the bar must end full, its
postfix counting the failed call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(300)

# An executor per cell: ipykernel attributes what a thread sends to the cell that started
# it, and nbclient keeps only the running cell's messages (a front end shows every widget
# update wherever it came from), so a bar updated by an executor thread started in an earlier
# cell would not be recorded here.
CELLS = [
    """
import math
from remote_futures import RemoteExecutor
with RemoteExecutor("local", max_workers=2, progress=True) as ex:
    print(list(ex.map(abs, range(-5, 0), chunksize=1)))
""",
    """
with RemoteExecutor("local", max_workers=2, progress=True) as ex:
    try:
        list(ex.map(math.sqrt, [1, -1, 4], chunksize=1))
    except ValueError as exc:
        print("failed as expected:", exc)
""",
]


def _bar(outputs: list[Any], state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The progress model and the text around it of the one bar a cell displayed."""
    views = [
        output["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for output in outputs
        if output.get("output_type") == "display_data"
        and "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert len(views) == 1, f"expected one widget bar, got outputs {outputs!r}"
    box = state[views[0]]
    assert box["model_name"] == "HBoxModel"
    children = [state[ref.removeprefix("IPY_MODEL_")] for ref in box["state"]["children"]]
    (progress,) = [c["state"] for c in children if c["model_name"].endswith("ProgressModel")]
    text = " ".join(c["state"]["value"] for c in children if c["model_name"] == "HTMLModel")
    return progress, text.replace("\u2007", " ")


def test_progress_bar_is_a_widget_in_a_jupyter_kernel(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = NotebookClient(
        notebook, timeout=240, kernel_name="python3", store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    first, second = (cell.outputs for cell in notebook.cells)

    printed = "".join(o.get("text", "") for o in first if o.get("output_type") == "stream")
    assert "[5, 4, 3, 2, 1]" in printed
    # No text bar went to stderr: the notebook bar was chosen.
    assert not [o for o in first + second if o.get("name") == "stderr" and "call" in o["text"]]
    progress, text = _bar(first, state)
    assert (progress["value"], progress["max"]) == (5, 5)
    assert "5/5" in text and "queued=0" in text and "running=0" in text and "failed=0" in text

    assert "failed as expected: math domain error" in "".join(o.get("text", "") for o in second)
    progress, text = _bar(second, state)
    assert (progress["value"], progress["max"]) == (3, 3)
    assert "3/3" in text and "failed=1" in text
