"""A consumer's PostgreSQL writer keeps its connection between batches; one the server dropped meanwhile (a
restart, an idle timeout) must not cost the next batch, or the consumer abandons and re-reads it."""

from __future__ import annotations

import uuid

from mlops_platform.postgres import PostgresBatchWriter, connect, insert_rows


class RowsWriter(PostgresBatchWriter):
    application_name = "test-batch-writer"

    def __init__(self, settings, table: str) -> None:
        super().__init__(settings)
        self.table = table

    def ensure_tables(self) -> None:
        with connect(self.settings) as conn, conn.cursor() as cur:
            cur.execute(f"create table if not exists {self.table} (id bigint primary key)")

    def insert(self, cur, batch):
        return insert_rows(cur, f"insert into {self.table} (id) values %s on conflict (id) do nothing",
                           [(i,) for i in batch])


def test_a_batch_after_the_server_dropped_the_connection_is_written_on_a_new_one(feast_up, settings):
    writer = RowsWriter(settings, f"writer_test_{uuid.uuid4().hex[:8]}")
    writer.check()
    try:
        assert writer.write([1, 2]) == 2
        with connect(settings) as conn, conn.cursor() as cur:  # as a PostgreSQL restart would
            cur.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
                        (writer.application_name,))
        assert writer.write([2, 3]) == 1
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"select id from {writer.table} order by id")
            assert [row[0] for row in cur.fetchall()] == [1, 2, 3]
    finally:
        writer.close()
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"drop table if exists {writer.table}")
