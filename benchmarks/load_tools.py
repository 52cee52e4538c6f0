"""Load clients that are not Python, so the client is never what a serving figure measures.

- `vegeta` (open loop: requests at a constant rate whatever the answers do), pinned, built from the Go
  module proxy into `.tools/bin` the first time (about a minute; needs `go` on the PATH);
- `wrk` (closed loop: a fixed number of connections, each sending its next request when the last is
  answered: the maximum throughput), from Debian's package (`apt-get install -y wrk`).

Both read their request bodies from files this module writes: vegeta a JSON-lines target list, wrk a Lua
script that picks a body at random. Results come back as plain numbers in milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlops_platform.settings import REPO_ROOT

VEGETA_MODULE, VEGETA_VERSION = "github.com/tsenart/vegeta/v12", "v12.13.0"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"


class ToolMissing(RuntimeError):
    """A load client that is neither installed nor installable here."""


def vegeta() -> str:
    """The pinned vegeta binary, built with `go install` into .tools/bin when it is not there yet."""
    binary = TOOLS_BIN / "vegeta"
    if binary.exists():
        return str(binary)
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolMissing("vegeta is not built and `go` is not on the PATH: install Go, or put a vegeta "
                          f"{VEGETA_VERSION} binary at {binary}")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    print(f"building vegeta {VEGETA_VERSION} from the Go module proxy into {TOOLS_BIN} ...", flush=True)
    subprocess.run([go, "install", f"{VEGETA_MODULE}@{VEGETA_VERSION}"], check=True,
                   env={**os.environ, "GOBIN": str(TOOLS_BIN), "CGO_ENABLED": "0"})
    return str(binary)


def wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise ToolMissing("wrk is not installed: `apt-get install -y wrk` (Debian's package)")
    return found


# ---- one open-loop step ----------------------------------------------------------------------------------
@dataclass
class Step:
    """One constant-rate run: what was asked, what was delivered, and the latency quantiles (ms)."""

    rate: float
    requests: int
    throughput: float
    success: float
    p50: float
    p90: float
    p99: float
    max: float
    errors: list[str]

    def held(self, p99_bound_ms: float) -> bool:
        """The rate was served: every request answered 2xx, >= 97% of the rate delivered, p99 within the bound."""
        return self.success >= 1.0 and self.throughput >= 0.97 * self.rate and self.p99 <= p99_bound_ms


def write_targets(path: Path, url: str, bodies: list[bytes], headers: dict[str, list[str]]) -> Path:
    """vegeta's JSON target format, one POST per body (vegeta cycles through them)."""
    with open(path, "w") as out:
        for body in bodies:
            out.write(json.dumps({"method": "POST", "url": url, "header": headers,
                                  "body": base64.b64encode(body).decode()}) + "\n")
    return path


def attack(targets: Path, rate: float, seconds: float, connections: int = 64, timeout_s: float = 2.0) -> Step:
    """`vegeta attack` at `rate` requests/s for `seconds`, reported as a Step."""
    binary = vegeta()
    attack_run = subprocess.Popen(
        [binary, "attack", "-format=json", f"-targets={targets}", f"-rate={rate:g}/s", f"-duration={seconds:g}s",
         f"-timeout={timeout_s:g}s", f"-connections={connections}", f"-max-connections={connections * 4}",
         "-keepalive=true"], stdout=subprocess.PIPE)
    report = subprocess.run([binary, "report", "-type=json"], stdin=attack_run.stdout, capture_output=True,
                            check=True)
    attack_run.wait()
    data = json.loads(report.stdout)
    latencies = data["latencies"]
    ms = 1e-6
    return Step(rate=rate, requests=int(data["requests"]), throughput=float(data["throughput"]),
                success=float(data["success"]), p50=latencies["50th"] * ms, p90=latencies["90th"] * ms,
                p99=latencies["99th"] * ms, max=latencies["max"] * ms, errors=sorted(set(data.get("errors") or [])))


# ---- one closed-loop run ---------------------------------------------------------------------------------
@dataclass
class ClosedLoop:
    connections: int
    requests_per_second: float
    p50: float
    p99: float
    non_2xx: int
    socket_errors: int


WRK_SCRIPT = """\
local bodies = {%s}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
request = function()
  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])
end
"""


def write_wrk_script(path: Path, bodies: list[bytes], headers: dict[str, str]) -> Path:
    quoted = ", ".join(json.dumps(body.decode()) for body in bodies)  # JSON string quoting is valid Lua here
    extra = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    path.write_text(WRK_SCRIPT % (quoted, extra))
    return path


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def closed_loop(url: str, script: Path, connections: int, seconds: float, threads: int = 2) -> ClosedLoop:
    """`wrk --latency` with `connections` connections for `seconds`."""
    out = subprocess.run([wrk(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, connections)


def parse_wrk(out: str, connections: int) -> ClosedLoop:
    """The figures of `wrk --latency`'s report."""
    quantiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.MULTILINE))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return ClosedLoop(connections, rate, _ms(quantiles["50"]), _ms(quantiles["99"]),
                      int(non_2xx.group(1)) if non_2xx else 0, sum(map(int, socket.groups())) if socket else 0)
