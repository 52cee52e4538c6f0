"""The champion's drift reference: what training saw, logged on the run that made the version.

Which version is the champion: mlops_platform.model_registry.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

# training_pipeline.final_model.REFERENCE_ARTIFACT; repeated so the service does not import the training stack.
REFERENCE_ARTIFACT = "reference/reference.parquet"


class NoReference(LookupError):
    """The champion's run has no drift reference artifact."""


def load_reference(client, run_id: str) -> pd.DataFrame:
    """The reference frame logged on the run; NoReference when the run has none."""
    listed = {item.path for item in client.list_artifacts(run_id, str(Path(REFERENCE_ARTIFACT).parent))}
    if REFERENCE_ARTIFACT not in listed:
        raise NoReference(f"run {run_id} has no artifact {REFERENCE_ARTIFACT} (found {sorted(listed) or 'none'}): "
                          "a version trained before drift references were logged, or logged by hand")
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, REFERENCE_ARTIFACT, folder)
        return pd.read_parquet(path)


class ReferenceCache:
    """One reference per run id: a champion's reference never changes, so it is downloaded once."""

    def __init__(self, client) -> None:
        self.client = client
        self._frames: dict[str, pd.DataFrame] = {}

    def get(self, run_id: str) -> pd.DataFrame:
        if run_id not in self._frames:
            self._frames = {run_id: load_reference(self.client, run_id)}  # keep only the current champion's
        return self._frames[run_id]
