"""`feast apply`, run only when the feature repo changed since the registry last took it.

The fingerprint of the definitions is kept in the feast database itself, so a wiped database is
always re-applied, and an unchanged repo costs a single query instead of Feast's ~8 s start-up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from mlops_platform.settings import REPO_ROOT, Settings, get_settings

FEATURE_REPO = REPO_ROOT / "feast_repo"


def fingerprint(repo: Path = FEATURE_REPO) -> str:
    digest = hashlib.sha256()
    for path in sorted(repo.glob("*")):
        if path.suffix in {".py", ".yaml"} or path.name == ".feastignore":
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _connect(settings: Settings):
    import psycopg2

    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db), connect_timeout=5)
    conn.autocommit = True
    return conn


def applied_fingerprint(settings: Settings) -> str | None:
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("create table if not exists platform_feast_apply "
                        "(id int primary key, fingerprint text not null, applied_at timestamptz not null)")
            cur.execute("select fingerprint from platform_feast_apply where id = 1")
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def record_fingerprint(settings: Settings, value: str) -> None:
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into platform_feast_apply values (1, %s, now()) "
                        "on conflict (id) do update set fingerprint = excluded.fingerprint, applied_at = now()",
                        (value,))
    finally:
        conn.close()


def apply_if_changed(settings: Settings | None = None, force: bool = False) -> bool:
    """Run `feast apply` when the definitions changed; True when it ran."""
    settings = settings or get_settings()
    current = fingerprint()
    if not force and applied_fingerprint(settings) == current:
        print(f"feature repo unchanged (fingerprint {current[:12]}), feast apply skipped", flush=True)
        return False
    feast_cli = Path(sys.executable).with_name("feast")
    subprocess.run([str(feast_cli), "--chdir", str(FEATURE_REPO), "apply"], check=True,
                   env={**os.environ, **settings.feast_environment(), "PYTHONPATH": str(REPO_ROOT)})
    record_fingerprint(settings, current)
    return True


if __name__ == "__main__":
    apply_if_changed(force="--force" in sys.argv[1:])
