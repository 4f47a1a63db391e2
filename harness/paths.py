"""Where the harness writes when a command is given no --results."""
from __future__ import annotations

from pathlib import Path

# A user's runs: reports, the MLflow and Optuna stores, the doctor's and the bench's output. Ignored by
# git; results/ holds only the committed reference reports (scripts/regenerate-reports.sh writes them
# with --results results).
DEFAULT_RESULTS = Path("runs")
