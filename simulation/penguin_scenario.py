"""A drift scenario for the penguin classifier: classifications and their feedback through the running API,
then the monitoring service's verdict.

    bash run.sh scenario --project penguins --drifted|--normal [--requests 300] [--batch 20] [--timeout 300]
    (python -m simulation.penguin_scenario ... in local mode)

It sends palmerpenguins rows (those with every measurement, drawn at random) as inline instances to
`POST /models/penguin_species/predict`, `--batch` penguins a request, ids from SCENARIO_FIRST_ID, then the
true species of each to `/models/penguin_species/feedback`. `--drifted` shifts the body mass by
+BODY_MASS_SHIFT_G and the flipper length by +FLIPPER_SHIFT_MM (kept within the contract's bounds, which
the API enforces): two of the model's nine features, enough for the monitoring service's drift decision
(monitoring_service/model_drift.py). It then reads the monitoring service's /metrics until an evaluation
that began after the feedback, counted at least the answers sent and decided as expected (or --timeout
ran out), and prints the evidence as one JSON line: drift per feature, the share and the decision,
accuracy, macro F1, per-class recall. Exit code 0 when the decision is the expected one (drift for
--drifted, none for --normal), 1 otherwise or on timeout.

The monitoring window holds the last MONITOR_WINDOW_MINUTES of answers, so a --normal run right after a
--drifted one still sees the drifted answers until they leave the window.
Bounded like the other scenarios (count, time) and only aimed at the configured serving URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence

import pandas as pd

from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS
from mlops_platform.settings import Settings, get_settings
from simulation.traffic import _bounded, check_target

SCENARIO_FIRST_ID = 9_000_000
BODY_MASS_SHIFT_G = 600.0
FLIPPER_SHIFT_MM = 15.0
MAX_REQUESTS = 5_000
POLL_SECONDS = 2.0


def penguin_rows(count: int, seed: int) -> pd.DataFrame:
    """`count` palmerpenguins rows with every measurement (drawn with replacement beyond the 342 of them)."""
    from palmerpenguins import load_penguins

    rows = load_penguins().dropna(subset=list(contract.MEASUREMENT_NAMES))
    return rows.sample(count, replace=count > len(rows), random_state=seed).reset_index(drop=True)


def shift_measurements(rows: pd.DataFrame) -> pd.DataFrame:
    """Heavier penguins with longer flippers, clipped to the contract's bounds."""
    shifted = rows.copy()
    for name, shift in (("body_mass_g", BODY_MASS_SHIFT_G), ("flipper_length_mm", FLIPPER_SHIFT_MM)):
        low, high = contract.MEASUREMENT_BOUNDS[name]
        shifted[name] = (shifted[name] + shift).clip(low, high)
    return shifted


def instances(rows: pd.DataFrame, first_id: int) -> list[dict]:
    """Inline instances: the key, the island, the measurements, and the sex when known."""
    found = []
    for n, row in enumerate(rows.itertuples(index=False)):
        instance = {contract.JOIN_KEY: first_id + n, "island": row.island,
                    **{name: float(getattr(row, name)) for name in contract.MEASUREMENT_NAMES}}
        if contract.normalise_sex(row.sex) is not None:
            instance["sex"] = row.sex
        found.append(instance)
    return found


class Api:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.base_url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise RuntimeError(f"POST {path} answered {exc.code}: {detail}") from None


def classify_and_report(api: Api, rows: pd.DataFrame, batch: int) -> dict:
    """Predict in batches, then send every true species as feedback; returns counts and the model version."""
    route = f"/models/{PENGUINS.model_name}"
    answered, versions, feedback = 0, set(), 0
    sent = instances(rows, SCENARIO_FIRST_ID)
    species = dict(zip((i[contract.JOIN_KEY] for i in sent), rows[contract.LABEL], strict=True))
    for start in range(0, len(sent), batch):
        request_id = f"penguin-scenario-{uuid.uuid4().hex[:12]}"
        answer = api.post(f"{route}/predict", {"request_id": request_id, "instances": sent[start:start + batch]})
        versions.add(str(answer["model"]["version"]))
        for prediction in answer["predictions"]:
            answered += 1
            key = prediction[contract.JOIN_KEY]
            api.post(f"{route}/feedback", {"request_id": request_id, contract.JOIN_KEY: key, "label": species[key]})
            feedback += 1
    return {"sent": len(sent), "answered": answered, "feedback": feedback, "model_versions": sorted(versions)}


def model_numbers(metrics_url: str) -> dict:
    """The monitoring service's numbers for the penguin model, read from its /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{metrics_url.rstrip('/')}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict = {"features": {}, "class_recall": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == "monitoring_last_evaluation_timestamp_seconds":
                found["evaluated_at"] = sample.value
            if labels.get("model") != PENGUINS.model_name:
                continue
            name = sample.name.removeprefix("monitoring_model_")
            if name == "feature_drift_score":
                found["features"].setdefault(labels["feature"], {})["score"] = round(sample.value, 4)
            elif name == "feature_drifted":
                found["features"].setdefault(labels["feature"], {})["drifted"] = bool(sample.value)
            elif name == "class_recall":
                found["class_recall"][labels["class"]] = round(sample.value, 4)
            elif name in ("window_predictions", "window_labeled_predictions", "drift_share", "drift_detected",
                          "accuracy", "macro_f1"):
                found[name] = round(sample.value, 4)
    return found


def verdict(metrics_url: str, after: float, answered: int, expected: bool, timeout: float) -> dict | None:
    """The numbers of an evaluation that began after `after` and counted the answers: the first whose drift
    decision is `expected`, else the last one seen when `timeout` runs out (None when there was none)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            numbers = model_numbers(metrics_url)
        except OSError:  # the service restarting: ask again
            numbers = {}
        if (numbers.get("evaluated_at", 0) > after and numbers.get("window_labeled_predictions", 0) >= answered
                and "drift_detected" in numbers):
            last = numbers
            if bool(numbers["drift_detected"]) == expected:
                return numbers
        time.sleep(POLL_SECONDS)
    return last


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash run.sh scenario --project penguins", description=__doc__.split("\n")[0])
    parser.add_argument("--project", default=PENGUINS.name, choices=[PENGUINS.name])
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--drifted", action="store_true", help="heavier penguins with longer flippers")
    kind.add_argument("--normal", action="store_true", help="the penguins as measured")
    parser.add_argument("--requests", default=300, type=_bounded(int, 1, MAX_REQUESTS, "--requests"),
                        help="penguins to classify")
    parser.add_argument("--batch", default=20, type=_bounded(int, 1, 100, "--batch"), help="penguins per request")
    parser.add_argument("--timeout", default=300.0, type=_bounded(float, 5.0, 3600.0, "--timeout"),
                        help="seconds to wait for the monitoring service's verdict")
    parser.add_argument("--seed", default=0, type=int)
    return parser.parse_args(list(argv))


def run(args: argparse.Namespace, settings: Settings) -> dict:
    api = Api(check_target(settings.serving_url, settings), settings.serving_api_token if settings.serving_auth
              else None)
    rows = penguin_rows(args.requests, args.seed)
    traffic = classify_and_report(api, shift_measurements(rows) if args.drifted else rows, args.batch)
    expected = bool(args.drifted)
    numbers = verdict(settings.monitoring_service_url, time.time(), traffic["answered"], expected, args.timeout)
    report = {"scenario": "drifted" if args.drifted else "normal", "model": PENGUINS.model_name, **traffic,
              "expected_drift": expected, "monitoring_url": settings.monitoring_service_url}
    if numbers is None:
        return {**report, "outcome": "timeout", "waited_s": args.timeout,
                "hint": "no evaluation counted the answers: is the monitoring service up (bash run.sh monitoring "
                        "status), and --timeout longer than MONITOR_INTERVAL_SECONDS?"}
    numbers.pop("evaluated_at", None)
    detected = bool(numbers.get("drift_detected"))
    return {**report, "outcome": "as expected" if detected == expected else "unexpected", "drift_detected": detected,
            **{key: value for key, value in numbers.items() if key != "drift_detected"}}


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(args, settings)
    print(json.dumps(report))
    return 0 if report["outcome"] == "as expected" else 1


if __name__ == "__main__":
    raise SystemExit(main())
