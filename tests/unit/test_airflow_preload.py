"""The processes that fork Airflow's tasks (the scheduler, Celery workers) preload only what is safe to fork."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mlops_platform import airflow_preload
from mlops_platform.airflow_config import airflow_component_command
from mlops_platform.airflow_preload import PreloadError, preload
from mlops_platform.services import python_command
from tests.conftest import build_settings


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("preload_probe_")]:
        del sys.modules[name]


def test_the_components_that_fork_tasks_preload_unless_turned_off():
    settings = build_settings()
    assert python_command("airflow-scheduler", settings).argv[1:] == ["-m", "mlops_platform.airflow_preload",
                                                                       "scheduler"]
    assert airflow_component_command(settings, "celery", "worker")[1:3] == ["-m", "mlops_platform.airflow_preload"]
    for component in ("api-server", "dag-processor", "triggerer"):
        assert python_command(f"airflow-{component}", settings).argv[1:] == ["-m", "airflow", component]
    off = build_settings(AIRFLOW_PRELOAD="off")
    assert python_command("airflow-scheduler", off).argv[1:] == ["-m", "airflow", "scheduler"]
    assert airflow_component_command(off, "celery", "worker")[1:3] == ["-m", "airflow"]


def test_a_module_that_starts_a_thread_at_import_is_refused(module_dir, monkeypatch):
    monkeypatch.setattr(airflow_preload.gc, "freeze", lambda: None)
    (module_dir / "preload_probe_thread.py").write_text(textwrap.dedent("""
        import threading
        stop = threading.Event()
        threading.Thread(target=stop.wait, name="probe-thread", daemon=True).start()
    """))
    try:
        with pytest.raises(PreloadError, match="started thread.*probe-thread"):
            preload(["preload_probe_thread"])
    finally:
        sys.modules["preload_probe_thread"].stop.set()


def test_a_module_that_is_not_fork_safe_is_refused(module_dir, monkeypatch):
    monkeypatch.setattr(airflow_preload.gc, "freeze", lambda: None)
    monkeypatch.setattr(airflow_preload, "NOT_FORK_SAFE", ("preload_probe_unsafe",))
    (module_dir / "preload_probe_unsafe.py").write_text("VALUE = 1\n")
    (module_dir / "preload_probe_plain.py").write_text("import preload_probe_unsafe\n")
    with pytest.raises(PreloadError, match="imported \\['preload_probe_unsafe'\\]"):
        preload(["preload_probe_plain"])


def test_safe_modules_load_and_are_frozen_whatever_the_process_had_imported_before(module_dir, monkeypatch):
    frozen = []
    monkeypatch.setattr(airflow_preload.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(airflow_preload, "NOT_FORK_SAFE", ("json",))  # this process has it already
    (module_dir / "preload_probe_safe.py").write_text("import json\nVALUE = 1\n")
    assert preload(["preload_probe_safe"]) >= 0
    assert "preload_probe_safe" in sys.modules and frozen == [True]
