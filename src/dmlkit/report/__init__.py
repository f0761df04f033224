"""What a run learned, for people: a self-contained HTML report and PNG figures.

``collect(run_dir)`` gathers the data (metrics, curves, a 2-D map, a retrieval gallery,
verification curves, per-class results, confused classes, all by the run's metric);
``write_report`` renders it as one HTML file with everything inlined; ``write_figures``
draws the same data with matplotlib (``pip install 'dmlkit[report]'`` for matplotlib and
umap-learn).
"""

from dmlkit.report.collect import collect
from dmlkit.report.figures import write_figures
from dmlkit.report.html import render, write_report
from dmlkit.report.projection import project_2d

__all__ = ["collect", "project_2d", "render", "write_figures", "write_report"]
