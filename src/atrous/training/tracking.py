"""Optional MLflow logging beside TensorBoard (``--run.mlflow true``, ``atrous[mlflow]``).

The run's configuration goes in as parameters (``run.batch_size``, ``model.backbone``, …) and
every record of ``metrics.jsonl`` as metrics at its iteration. Where they go is MLflow's own
setting (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; by default ``./mlruns``). The MLflow
run's id is kept in the output folder, so a resumed run logs into the same MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from atrous.errors import missing_dependency

#: The file in the output folder holding the MLflow run's id.
RUN_ID_FILE = "mlflow_run_id"


def import_mlflow() -> ModuleType:
    """The ``mlflow`` package, or the error naming the extra that installs it."""
    try:
        import mlflow
    except ImportError:
        raise missing_dependency("mlflow", "--run.mlflow true") from None
    return mlflow


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as one level: ``{"run.batch_size": 16, …}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class MlflowLog:
    """One MLflow run for one training run: parameters once, metrics at each record."""

    def __init__(self, output_dir: Path, config: dict[str, Any], fresh: bool) -> None:
        self.mlflow = import_mlflow()
        id_file = output_dir / RUN_ID_FILE
        if fresh or not id_file.is_file():
            active = self.mlflow.start_run(run_name=output_dir.name)
            id_file.write_text(active.info.run_id)
            # Once per MLflow run: MLflow refuses a parameter logged again with another value
            # (a resumed invocation's run.stop_after).
            self.mlflow.log_params(flatten(config))
        else:
            self.mlflow.start_run(run_id=id_file.read_text().strip())

    def write(self, record: dict[str, Any]) -> None:
        """The record's numbers (not null ones) as metrics at its iteration."""
        numbers = {
            key: float(value)
            for key, value in record.items()
            if key != "iteration" and isinstance(value, int | float)
        }
        if numbers:
            self.mlflow.log_metrics(numbers, step=record["iteration"])

    def close(self) -> None:
        self.mlflow.end_run()
