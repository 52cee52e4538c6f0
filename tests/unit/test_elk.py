"""The ELK configuration, checked without Elasticsearch: our real log lines against the index template's
mapping, Filebeat's configuration against the template and docker-compose.yml, Kibana's saved objects,
and the one-shot setup scripts against a stub HTTP server that records what they send.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import io
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_platform.logs import configure_logging
from mlops_platform.services import log_file
from tests.conftest import build_settings

ROOT = Path(__file__).resolve().parents[2]
ELK_DIR = ROOT / "monitoring" / "elk"
TEMPLATE_FILE = ELK_DIR / "index-template.json"
ILM_POLICY_FILE = ELK_DIR / "ilm-policy.json"
FILEBEAT_FILE = ELK_DIR / "filebeat.yml"
SAVED_OBJECTS = sorted((ELK_DIR / "kibana").glob("*.ndjson"))
COMPOSE_FILE = ROOT / "docker-compose.yml"

# The fields the platform's log lines carry, and the type each must be mapped with.
REQUIRED_FIELDS = {
    "timestamp": "date", "level": "keyword", "service": "keyword", "logger": "keyword", "message": "text",
    "request_id": "keyword", "run_id": "keyword", "model_version": "keyword", "latency_ms": "float",
}
NUMBER_TYPES = {"float", "double", "half_float", "scaled_float", "long", "integer", "short", "byte",
                "unsigned_long"}
INTEGER_TYPES = {"long", "integer", "short", "byte", "unsigned_long"}
# Elasticsearch's strict_date_optional_time, the format of our `timestamp` field.
ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE_FILE.read_text())


@pytest.fixture(scope="module")
def mapping(template) -> dict[str, Any]:
    return template["template"]["mappings"]


@pytest.fixture(scope="module")
def filebeat() -> dict[str, Any]:
    return yaml.safe_load(FILEBEAT_FILE.read_text())


def field_type(mapping: dict[str, Any], dotted: str) -> str | None:
    """The mapped type of a dotted field name (`object` for an object), None when unmapped."""
    properties = mapping["properties"]
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        entry = properties.get(part)
        if entry is None:
            return None
        if i == len(parts) - 1:
            return entry.get("type", "object" if "properties" in entry else None)
        properties = entry.get("properties", {})
    return None


def type_problems(value: Any, entry: dict[str, Any], path: str) -> list[str]:
    """Why Elasticsearch would refuse or mis-index `value` under mapping `entry` (empty: it fits)."""
    kind = entry.get("type", "object" if "properties" in entry else None)
    if value is None:
        return []
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        problems = []
        for key, item in value.items():
            if key not in entry.get("properties", {}):
                problems.append(f"{path}.{key}: not mapped")
            else:
                problems += type_problems(item, entry["properties"][key], f"{path}.{key}")
        return problems
    if kind == "date":
        if not isinstance(value, str) or not ISO_8601.fullmatch(value):
            return [f"{path}: {value!r} is not an ISO-8601 date"]
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return [f"{path}: {value!r} does not parse as a date"]
        return []
    if kind in ("keyword", "text", "match_only_text", "wildcard"):
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not a string ({kind})"]
    if kind in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{path}: {value!r} is not a number ({kind})"]
        if kind in INTEGER_TYPES and not isinstance(value, int):
            return [f"{path}: {value!r} is not an integer ({kind})"]
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    return [f"{path}: unexpected mapping type {kind!r}"]


def check_document(document: dict[str, Any], mapping: dict[str, Any]) -> list[str]:
    return type_problems(document, {"properties": mapping["properties"]}, "$")


# ---------------------------------------------------------------------------------------------
# Our log lines against the template
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def real_log_lines() -> list[dict[str, Any]]:
    """Lines written by mlops_platform.logs, the way our services log (extra fields included)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):  # the handler writes to the stdout of the moment it is made
        log = configure_logging("serving", "DEBUG")
    try:
        log.info("prediction served", extra={"request_id": "0b6f6c1e-8d8f-4a53-9f57-3c7c7c1d2e10",
                                             "model_version": "3", "run_id": "5f0c1b2d3e4f40a1b2c3d4e5f6a7b8c9",
                                             "latency_ms": 4.217, "driver_id": 1042})
        log.info("batch committed", extra={"latency_ms": 12, "topic": "predictions"})
        log.warning("online features unavailable", extra={"request_id": "r-2", "error": "Redis timed out"})
        logging.getLogger("model_serving.model_store").info(
            "model swapped", extra={"model_name": "driver_trip_completion", "model_version": "4",
                                    "run_id": "0123456789abcdef0123456789abcdef"})
        try:
            raise ValueError("bad payload")
        except ValueError:
            log.exception("request failed", extra={"request_id": "r-3", "reason": "invalid"})
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert len(lines) == 5, lines
    return [json.loads(line) for line in lines]


def test_template_maps_the_log_format_fields(mapping) -> None:
    assert mapping["dynamic"] is False, "fields outside the template stay unindexed instead of growing the mapping"
    for field, expected in REQUIRED_FIELDS.items():
        assert field_type(mapping, field) == expected, f"{field} must be mapped as {expected}"


def test_real_log_lines_fit_the_template(real_log_lines, mapping) -> None:
    fields = set().union(*(line.keys() for line in real_log_lines))
    assert set(REQUIRED_FIELDS) <= fields, f"the sample lines lack {sorted(set(REQUIRED_FIELDS) - fields)}"
    assert "exception" in fields
    for line in real_log_lines:
        problems = check_document(line, mapping)
        assert not problems, f"{line}\n" + "\n".join(problems)


def test_the_type_check_refuses_what_elasticsearch_would(mapping) -> None:
    # The check above proves something only if it catches wrong types.
    assert check_document({"timestamp": "yesterday"}, mapping)
    assert check_document({"latency_ms": "12.5"}, mapping)
    assert check_document({"latency_ms": True}, mapping)
    assert check_document({"request_id": {"nested": 1}}, mapping)
    assert check_document({"not_a_field": 1}, mapping)
    assert not check_document({"timestamp": "2025-01-31T12:34:56.789+00:00", "latency_ms": 3}, mapping)


def test_the_timestamp_is_what_filebeat_s_timestamp_processor_was_tested_with(real_log_lines, filebeat) -> None:
    processor = next(p["timestamp"] for p in filebeat["processors"] if "timestamp" in p)
    assert processor["field"] == "timestamp"
    shape = re.sub(r"\d", "9", real_log_lines[0]["timestamp"])
    tested = {re.sub(r"\d", "9", example) for example in processor["test"]}
    assert shape in tested, f"our timestamps look like {shape}; the processor is only tested with {tested}"


# ---------------------------------------------------------------------------------------------
# Filebeat, the template and docker-compose.yml agree
# ---------------------------------------------------------------------------------------------
def test_filebeat_writes_where_the_template_applies(filebeat, template) -> None:
    index = filebeat["output.elasticsearch"]["index"]
    concrete = re.sub(r"%\{\+[^}]+\}", "2025.01.31", index)
    assert any(fnmatch.fnmatch(concrete, pattern) for pattern in template["index_patterns"]), (
        f"Filebeat writes {concrete}, which no pattern of the template ({template['index_patterns']}) matches"
    )
    # Filebeat must not install a template of its own over ours.
    assert filebeat["setup.template.enabled"] is False and filebeat["setup.ilm.enabled"] is False
    ilm = template["template"]["settings"]["index"]["lifecycle"]["name"]
    policy = json.loads(ILM_POLICY_FILE.read_text())
    assert "delete" in policy["policy"]["phases"], f"the lifecycle policy {ilm} never deletes anything"


def test_fields_filebeat_adds_are_mapped(filebeat, mapping) -> None:
    added: set[str] = {"@timestamp", "log.file.path", "host.name", "tags"}
    for log_input in filebeat["filebeat.inputs"]:
        assert log_input.get("fields_under_root") is True
        added |= set(log_input.get("fields", {}))
        parser = log_input["parsers"][0]["ndjson"]
        assert parser["target"] == "" and parser["overwrite_keys"] is True, "JSON keys must land at the root"
        for processor in log_input.get("processors", []):
            if "dissect" in processor:
                prefix = processor["dissect"].get("target_prefix", "dissect")
                for key in re.findall(r"%\{([^}]+)\}", processor["dissect"]["tokenizer"]):
                    added.add(f"{prefix}.{key}" if prefix else key)
            if "copy_fields" in processor:
                added |= {f["to"] for f in processor["copy_fields"]["fields"]}
            if "rename" in processor:
                added |= {f["to"] for f in processor["rename"]["fields"]}
    dropped = {f for p in filebeat["processors"] if "drop_fields" in p for f in p["drop_fields"]["fields"]}
    unmapped = sorted(f for f in added - dropped if field_type(mapping, f) is None)
    assert not unmapped, f"fields Filebeat adds that the template does not map: {unmapped}"


def test_filebeat_reads_the_files_our_services_write() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    home = services["serving"]["environment"]["PLATFORM_HOME"]
    settings = build_settings(home)
    written = str(log_file(settings, "serving"))
    config = yaml.safe_load(FILEBEAT_FILE.read_text())
    service_input = next(i for i in config["filebeat.inputs"] if i["id"] == "platform-services")
    assert any(fnmatch.fnmatch(written, pattern) for pattern in service_input["paths"]), (
        f"our services write {written}; Filebeat reads {service_input['paths']}"
    )
    # The same named volume holds the files in the services and in Filebeat.
    logs_dir = str(Path(written).parent)
    volume = next(v.split(":")[0] for v in services["serving"]["volumes"] if v.split(":")[1] == logs_dir)
    assert f"{volume}:{logs_dir}:ro" in services["filebeat"]["volumes"]
    for name in ("stream-consumer", "prediction-logger", "mlflow"):
        assert f"{volume}:{logs_dir}" in services[name]["volumes"], f"{name} does not write to {volume}"


def test_setup_services_run_the_scripts_in_order() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, script, after in (("elk-setup", "setup-elasticsearch.sh", "elasticsearch"),
                                ("kibana-setup", "setup-kibana.sh", "kibana")):
        service = services[name]
        mount = next(v for v in service["volumes"] if v.startswith("./monitoring/elk:"))
        target = mount.split(":")[1]
        assert service["entrypoint"] == ["bash", f"{target}/{script}"], f"{name} must run {script}"
        assert (ELK_DIR / script).is_file()
        assert service["depends_on"][after]["condition"] == "service_healthy"
        assert service["restart"] == "no"
    assert services["filebeat"]["depends_on"]["elk-setup"]["condition"] == "service_completed_successfully"
    assert services["kibana"]["depends_on"]["elk-setup"]["condition"] == "service_completed_successfully"
    for image in (services["elasticsearch"]["image"], services["kibana"]["image"], services["filebeat"]["image"]):
        assert re.search(r":9\.\d+\.\d+$", image), f"{image} is not a pinned, maintained 9.x image"
    assert services["elasticsearch"]["environment"]["xpack.security.enabled"] == "true"


# ---------------------------------------------------------------------------------------------
# Kibana's saved objects
# ---------------------------------------------------------------------------------------------
def saved_objects() -> list[dict[str, Any]]:
    objects = []
    for path in SAVED_OBJECTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                assert {"type", "id", "attributes"} <= set(obj), f"{path.name}:{number} is not a saved object"
                objects.append(obj)
    return objects


def test_saved_objects_parse_and_reference_the_data_view(template, mapping) -> None:
    assert SAVED_OBJECTS, "no saved objects in monitoring/elk/kibana/"
    objects = saved_objects()
    ids = [(o["type"], o["id"]) for o in objects]
    assert len(ids) == len(set(ids)), "saved object ids must be unique"
    views = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    assert views, "no data view"
    for view in views.values():
        title = view["attributes"]["title"]
        assert title in template["index_patterns"] or any(fnmatch.fnmatch(p, title) for p in template["index_patterns"])
        assert field_type(mapping, view["attributes"]["timeFieldName"]) == "date"
    searches = [o for o in objects if o["type"] == "search"]
    assert searches, "no saved search"
    for search in searches:
        source = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        refs = {r["name"]: r for r in search["references"]}
        ref = refs.get(source.get("indexRefName"))
        assert ref and ref["type"] == "index-pattern" and ref["id"] in views, (
            f"saved search {search['id']} does not reference the data view"
        )
        for column in search["attributes"]["columns"]:
            assert field_type(mapping, column), f"saved search {search['id']} shows unmapped field {column}"
        query = source["query"]
        assert query["language"] == "kuery"
        for field in re.findall(r"([\w.@]+)\s*:", query["query"]):
            assert field_type(mapping, field), f"saved search {search['id']} queries unmapped field {field}"
    setup = (ELK_DIR / "setup-kibana.sh").read_text()
    default_view = re.search(r'DATA_VIEW_ID="([^"]+)"', setup)[1]
    assert default_view in views, f"setup-kibana.sh makes {default_view} the default, which is not imported"


# ---------------------------------------------------------------------------------------------
# The setup scripts, against a stub that answers like Elasticsearch and Kibana
# ---------------------------------------------------------------------------------------------
class Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    import_answer = {"success": True, "successCount": 4}

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        answer = self.import_answer if self.path.startswith("/api/saved_objects/_import") else {"acknowledged": True}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def stub():
    Recorder.requests = []
    Recorder.import_answer = {"success": True, "successCount": 4}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["bash", str(ELK_DIR / name)], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "SETUP_ATTEMPTS": "2", "SETUP_RETRY_SECONDS": "0", **env})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


PASSWORD = 'elastic-pw-with-"quote"-and-\\backslash'


def test_setup_elasticsearch_sets_the_password_and_puts_policy_and_template(stub) -> None:
    result = run_script("setup-elasticsearch.sh", {"ES_URL": stub, "ELASTIC_PASSWORD": PASSWORD,
                                                   "KIBANA_SYSTEM_PASSWORD": "kibana-pw"})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = {(r["method"], r["path"]): r for r in Recorder.requests}
    assert list(calls) == [("POST", "/_security/user/kibana_system/_password"),
                           ("PUT", "/_ilm/policy/ride-mlops-logs"), ("PUT", "/_index_template/ride-mlops-logs")]
    for request in Recorder.requests:
        assert request["headers"]["Authorization"] == basic("elastic", PASSWORD)
    assert json.loads(calls["POST", "/_security/user/kibana_system/_password"]["body"]) == {"password": "kibana-pw"}
    assert json.loads(calls["PUT", "/_ilm/policy/ride-mlops-logs"]["body"]) == json.loads(ILM_POLICY_FILE.read_text())
    assert json.loads(calls["PUT", "/_index_template/ride-mlops-logs"]["body"]) == json.loads(TEMPLATE_FILE.read_text())
    assert PASSWORD not in result.stdout + result.stderr


def test_setup_kibana_imports_the_saved_objects_and_sets_the_default_view(stub) -> None:
    result = run_script("setup-kibana.sh", {"KIBANA_URL": stub, "ELASTIC_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stdout + result.stderr
    imports = [r for r in Recorder.requests if r["path"] == "/api/saved_objects/_import?overwrite=true"]
    assert len(imports) == len(SAVED_OBJECTS)
    for request, path in zip(imports, SAVED_OBJECTS, strict=True):
        assert request["headers"]["kbn-xsrf"] == "true"
        assert request["headers"]["Content-Type"].startswith("multipart/form-data")
        assert path.read_bytes().strip() in request["body"]
        assert request["headers"]["Authorization"] == basic("elastic", PASSWORD)
    default = [r for r in Recorder.requests if r["path"] == "/api/data_views/default"]
    assert len(default) == 1 and json.loads(default[0]["body"])["data_view_id"] == "ride-mlops-logs"


def test_setup_kibana_fails_when_kibana_reports_a_failed_import(stub) -> None:
    Recorder.import_answer = {"success": False, "successCount": 0,
                              "errors": [{"id": "x", "error": {"type": "conflict"}}]}
    result = run_script("setup-kibana.sh", {"KIBANA_URL": stub, "ELASTIC_PASSWORD": PASSWORD})
    assert result.returncode != 0
    assert "could not import" in result.stderr
