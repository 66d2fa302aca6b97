"""Reports from run directories: a sweep's results table, and the reproduction results page.

``python -m cnnlab.report <dir>`` writes ``results.csv/.md/.png`` for the runs under ``dir``;
``python -m cnnlab.report --paper <runs root>`` writes ``docs/RESULTS.md`` and its figures.
"""

from cnnlab.report.cli import main
from cnnlab.report.sweep import write_report

__all__ = ["main", "write_report"]
