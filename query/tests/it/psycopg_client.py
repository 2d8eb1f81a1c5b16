"""psycopg (3) against `backbeat-query serve --pg-listen`: server-side
prepared statements with parameters, timestamps, arrays and JSON as native
Python types, in text and binary; an error and the connection goes on.
Run by `pg_clients.rs` with the pg-wire port; exits non-zero on a failure."""

import datetime
import sys

import psycopg
from psycopg import errors

UTC = datetime.timezone.utc


def main(port: int) -> None:
    with psycopg.connect(host="127.0.0.1", port=port, user="backbeat", dbname="backbeat") as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            # Server-side prepared (Parse once, Bind/Execute with the values).
            sql = (
                "SELECT window_index, window_start, issues, published_at, secret_rotations_ok "
                "FROM bar_reports WHERE cluster_id = %s AND window_index >= %s ORDER BY window_index"
            )
            cur.execute(sql, ["c", 1], prepare=True)
            rows = cur.fetchall()
            assert len(rows) == 2, rows
            window_index, window_start, issues, published_at, ok = rows[0]
            assert window_index == 1, rows
            assert window_start == datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), window_start
            assert issues == [{"code": "missing_beats", "count": 2, "sample": ["1", "2"]}], issues
            assert isinstance(published_at, datetime.datetime) and published_at.tzinfo is not None
            assert ok is True
            assert rows[1][1] is None, rows
            cur.execute(sql, ["c", 2], prepare=True)
            assert [r[0] for r in cur.fetchall()] == [2]

            cur.execute(
                "SELECT array_agg(beat_index ORDER BY beat_index), array_agg(phase ORDER BY beat_index), min(hlc_time) "
                "FROM beats WHERE hlc_time >= %s AND cluster_id = %s",
                [datetime.datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=UTC), "c"],
                prepare=True,
            )
            beats, phases, first = cur.fetchone()
            assert beats == [4, 7], beats
            assert phases == ["plan", "review"], phases
            assert first == datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), first

            cur.execute("SELECT progress, agent_id FROM claims WHERE progress > %s", [0.25], prepare=True)
            assert cur.fetchall() == [(0.5, "a")]

        # A refused statement: the error class, then the connection goes on
        # (psycopg opened a transaction: it is rolled back, as with PostgreSQL).
        try:
            conn.execute("DELETE FROM claims")
            raise AssertionError("DELETE was not refused")
        except errors.InsufficientPrivilege as e:
            assert "read-only" in str(e), e
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM beats").fetchone() == (2,)

    print("psycopg: ok")


if __name__ == "__main__":
    main(int(sys.argv[1]))
