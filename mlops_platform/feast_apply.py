"""`feast apply`, run only when the feature repo changed since the registry last took it, after `feast plan`
has printed what it will change.

The fingerprint of the definitions is kept in the feast database itself, so a wiped database is
always re-applied, and an unchanged repo costs a single query instead of Feast's ~8 s start-up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from mlops_platform.feature_store import FEATURE_REPO
from mlops_platform.postgres import connect
from mlops_platform.settings import REPO_ROOT, Settings, get_settings


def fingerprint(repo: Path = FEATURE_REPO) -> str:
    digest = hashlib.sha256()
    for path in sorted(repo.glob("*")):
        if path.suffix in {".py", ".yaml"} or path.name == ".feastignore":
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def applied_fingerprint(settings: Settings) -> str | None:
    with connect(settings, autocommit=True, timeout=5) as conn, conn.cursor() as cur:
        cur.execute("create table if not exists platform_feast_apply "
                    "(id int primary key, fingerprint text not null, applied_at timestamptz not null)")
        cur.execute("select fingerprint from platform_feast_apply where id = 1")
        row = cur.fetchone()
        return row[0] if row else None


def record_fingerprint(settings: Settings, value: str) -> None:
    with connect(settings, autocommit=True, timeout=5) as conn, conn.cursor() as cur:
        cur.execute("insert into platform_feast_apply values (1, %s, now()) "
                    "on conflict (id) do update set fingerprint = excluded.fingerprint, applied_at = now()",
                    (value,))


def apply_if_changed(settings: Settings | None = None, force: bool = False) -> bool:
    """Run `feast apply` when the definitions changed; True when it ran."""
    settings = settings or get_settings()
    current = fingerprint()
    if not force and applied_fingerprint(settings) == current:
        print(f"feature repo unchanged (fingerprint {current[:12]}), feast apply skipped", flush=True)
        return False
    print(plan(settings), end="", flush=True)
    _feast("apply", settings)
    record_fingerprint(settings, current)
    return True


def plan(settings: Settings) -> str:
    """What `feast apply` would change in the registry and the stores: reviewed before every apply."""
    return _feast("plan", settings, capture=True)


def _feast(command: str, settings: Settings, capture: bool = False) -> str:
    feast_cli = Path(sys.executable).with_name("feast")
    result = subprocess.run([str(feast_cli), "--chdir", str(FEATURE_REPO), command], check=True,
                            capture_output=capture, text=True,
                            env={**os.environ, **settings.feast_environment(), "PYTHONPATH": str(REPO_ROOT)})
    return result.stdout if capture else ""


if __name__ == "__main__":
    apply_if_changed(force="--force" in sys.argv[1:])
