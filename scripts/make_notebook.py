"""Write a thin study notebook: load a results table, call one plotting function, save the figure.

    python scripts/make_notebook.py NAME TITLE RESULTS_CSV PLOT_FUNCTION FIGURE_NAME [INTRO]

Notebooks stay thin on purpose: the numbers come from the experiment's results file and the drawing from
``pladis_analysis.plotting``, so the test suite can execute every notebook in seconds.
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def make(name: str, title: str, results: str, plot: str, figure: str, intro: str = "") -> Path:
    cells = [
        new_markdown_cell(f"# {title}\n\n{intro}\n\nData: `{results}` (and its `.meta.json` for provenance). "
                          f"Regenerate it with the experiment named in `paper_figures/README.md`."),
        new_code_cell(
            "import json, os\nfrom pathlib import Path\n\n"
            "from pladis_analysis import plotting\nfrom pladis_analysis.results import read_meta, read_table\n\n"
            f"RESULTS = Path('..') / {results!r}\n"
            "FIGURES = Path(os.environ.get('PLADIS_FIGURE_DIR', Path('..') / 'paper_figures'))\n"
            "table = read_table(RESULTS)\nmeta = read_meta(RESULTS)\n"
            "print({k: meta[k] for k in ('git_commit', 'created', 'device', 'threads')})\ntable.head()"),
        new_code_cell(f"fig = plotting.{plot}(table)\nplotting.save_figure(fig, FIGURES / {figure!r})"),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(make(*sys.argv[1:]))
