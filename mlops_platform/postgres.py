"""PostgreSQL, the one way in: connections to the feature database, schema set-up, batch inserts.

Every table the platform keeps (the offline store, the prediction log, the retraining triggers, Feast's
apply fingerprint) lives in the `feast` database; each module owns its tables' DDL and comes here for
the connection, the serialised schema set-up and the one-statement batch insert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mlops_platform.settings import Settings, get_settings

CONNECT_TIMEOUT_SECONDS = 10


def address(settings: Settings) -> str:
    """host:port/database of the feature database, for messages."""
    return f"{settings.postgres_host}:{settings.postgres_port}/{settings.feast_db}"


def open_connection(settings: Settings | None = None, application_name: str | None = None,
                    timeout: int = CONNECT_TIMEOUT_SECONDS, database: str | None = None):
    """A new psycopg2 connection, to the feature database unless another is named (the server's own
    `postgres` database, MLflow's, Airflow's); the caller commits and closes it."""
    import psycopg2

    settings = settings or get_settings()
    options = {"application_name": application_name} if application_name else {}
    return psycopg2.connect(settings.postgres_dsn(database or settings.feast_db), connect_timeout=timeout, **options)


@contextmanager
def connect(settings: Settings | None = None, autocommit: bool = False, timeout: int = CONNECT_TIMEOUT_SECONDS):
    """A psycopg2 connection to the feature database; committed on success, rolled back on error, closed."""
    conn = open_connection(settings, timeout=timeout)
    conn.autocommit = autocommit
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            conn.rollback()
        raise
    finally:
        conn.close()


async def connect_async(settings: Settings, timeout_seconds: float):
    """An autocommit psycopg (3) async connection whose connect and every statement give up after the timeout."""
    import psycopg

    return await psycopg.AsyncConnection.connect(
        settings.postgres_dsn(settings.feast_db), autocommit=True, connect_timeout=int(timeout_seconds),
        options=f"-c statement_timeout={int(timeout_seconds * 1000)}")


@contextmanager
def schema_lock(settings: Settings | None, name: str) -> Iterator[Any]:
    """A cursor in a transaction holding the advisory lock `name`: services starting together set a schema up
    one after the other instead of racing on `create ... if not exists`."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (name,))
        yield cur


def apply_ddl(settings: Settings | None, name: str, ddl: str) -> None:
    """Run idempotent DDL (create ... if not exists) under the advisory lock `name`."""
    with schema_lock(settings, name) as cur:
        cur.execute(ddl)


def insert_rows(cur, statement: str, rows: Sequence[tuple[Any, ...]], template: str | None = None) -> int:
    """One INSERT ... VALUES %s for all rows; returns how many were new (rowcount of the single statement)."""
    from psycopg2.extras import execute_values

    if not rows:
        return 0
    execute_values(cur, statement, rows, template=template, page_size=len(rows))
    return cur.rowcount


class PostgresBatchWriter:
    """One kept-open connection to the feature database; each batch is one transaction.

    A subclass says which tables it needs (`ensure_tables`), what one batch inserts (`insert`, returning
    what was new) and what an empty batch returns (`nothing_new`). A broken connection is replaced on
    the next batch; a failed statement is rolled back.
    """

    application_name = "platform-batch-writer"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn = None

    def ensure_tables(self) -> None:
        raise NotImplementedError

    def insert(self, cur, batch):
        raise NotImplementedError

    def nothing_new(self):
        return 0

    def check(self) -> None:
        """Create the tables if needed and open the connection."""
        self.ensure_tables()
        self._connection()

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self.settings, application_name=self.application_name)
        return self._conn

    def write(self, batch):
        """Insert the batch in one transaction; returns what `insert` counted as new.

        A kept connection the server dropped since the last batch (PostgreSQL restarted, an idle timeout) is
        replaced and the batch written once more at once, instead of failing a batch that a live server would
        take; every writer's inserts are idempotent, so a commit whose answer was lost is harmless.
        """
        import psycopg2

        if not len(batch):
            return self.nothing_new()
        kept = self._conn is not None and not self._conn.closed
        try:
            return self._write_once(batch)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not kept or self._conn is None or not self._conn.closed:
                raise  # a fresh connection failing, or a live one refusing: not a stale connection
            return self._write_once(batch)

    def _write_once(self, batch):
        import psycopg2

        conn = self._connection()
        try:
            with conn.cursor() as cur:
                inserted = self.insert(cur, batch)
            conn.commit()
        except psycopg2.Error:
            try:
                conn.rollback()
            except psycopg2.Error:
                conn.close()
            raise
        return inserted

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
