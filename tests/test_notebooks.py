"""Every notebook runs top to bottom (smoke budget) and is committed without outputs."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_star_vs_rl.ipynb", "03_your_own_task.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        assert not cell.get("outputs"), f"{path.name}: clear outputs before committing"
    assert nb["cells"][0]["cell_type"] == "markdown"  # starts by saying what it shows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    """As a user runs it: Jupyter's own (inline) plots, and widget progress bars in the first notebook."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("STAR_LITE_SMOKE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("CI", raising=False)
    bars = path.name == "01_quickstart.ipynb"
    if bars:
        monkeypatch.delenv("STAR_LITE_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("STAR_LITE_PROGRESS", "0")
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "notebooks"  # run beside a copy so the repository stays clean
    work.mkdir()
    (tmp_path / "configs").symlink_to(path.parents[1] / "configs")
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # one image per plot call: a returned figure is not drawn a second time as the cell's value
    for c in code:
        images = sum("image/png" in o.get("data", {}) for o in c.get("outputs", []))
        calls = len(re.findall(r"\bplot_\w+\(|\bplt\.(?:subplots|figure)\(", c.source))
        assert images == calls, (c.source, images)
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    assert "IProgress not found" not in text  # ipywidgets is there: bars are widgets, not text
    if bars:
        widgets = [o for c in code for o in c.get("outputs", [])
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets, "no widget progress bar was shown"
