"""A project's drift reference: what its champion was trained on.

First choice, the reference artifact on the champion's run (monitoring_service.reference, logged by the
driver training) when it holds every feature of the project. Otherwise the project's validated offline
rows that carry a label (for penguins: penguin_measurements with a species), the population its
trainer draws from; those are re-read every OFFLINE_REFERENCE_TTL so newly ingested data counts, at
most OFFLINE_REFERENCE_ROWS of them, the newest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from mlops_platform.projects import Project
from mlops_platform.settings import Settings
from monitoring_service.reference import NoReference, load_reference

OFFLINE_REFERENCE_TTL_SECONDS = 600.0
OFFLINE_REFERENCE_ROWS = 5000


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame
    source: str  # "run <id>" or "offline table <name>"


def read_offline_reference(settings: Settings, project: Project) -> pd.DataFrame:
    """The newest labelled rows of the project's offline table; NoReference when it has none."""
    from mlops_platform.postgres import connect

    columns = ", ".join(project.features)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select {columns} from {project.offline_table} where {project.label} is not null "
                    f"order by event_timestamp desc limit %s", (OFFLINE_REFERENCE_ROWS,))
        rows = cur.fetchall()
    if not rows:
        raise NoReference(f"the offline table {project.offline_table} has no rows with a {project.label}: "
                          "ingest the project's data (python -m data_pipeline.ingest) before it is monitored")
    return pd.DataFrame(rows, columns=list(project.features), dtype="float64")


class ModelReferences:
    """The reference of each project's champion, kept while the champion's run (or the TTL) lasts."""

    def __init__(self, settings: Settings, mlflow_client) -> None:
        self.settings = settings
        self.mlflow = mlflow_client
        self._kept: dict[str, tuple[str, float, Reference]] = {}  # model -> (run id or "", read at, reference)

    def get(self, project: Project, run_id: str | None) -> Reference:
        kept = self._kept.get(project.model_name)
        if kept and kept[0] == (run_id or ""):
            from_run = kept[2].source.startswith("run ")
            if from_run or time.monotonic() - kept[1] < OFFLINE_REFERENCE_TTL_SECONDS:
                return kept[2]
        reference = self._load(project, run_id)
        self._kept[project.model_name] = (run_id or "", time.monotonic(), reference)
        return reference

    def _load(self, project: Project, run_id: str | None) -> Reference:
        if run_id and self.mlflow is not None:
            try:
                frame = load_reference(self.mlflow, run_id)
            except NoReference:
                frame = None
            if frame is not None and set(project.features) <= set(frame.columns):
                return Reference(frame, f"run {run_id}")
        return Reference(read_offline_reference(self.settings, project), f"offline table {project.offline_table}")
