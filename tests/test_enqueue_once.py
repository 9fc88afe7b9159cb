"""``workers.broker.EnqueueOnce``: at most one message per task waiting in a Redis queue."""

from __future__ import annotations

import pytest

from workers.broker import EnqueueOnce, task_scope

URL = "postgresql+psycopg://postgres@localhost:5432/test?options=-csearch_path%3Ds1"


class FakeRedis:
    """SET NX EX and DEL, the two calls EnqueueOnce makes."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.down = False

    def set(self, key: str, value: bytes, nx: bool, ex: int) -> bool:
        if self.down:
            raise ConnectionError("redis is down")
        assert nx and ex > 0
        if key in self.keys:
            return False
        self.keys[key] = ex
        return True

    def delete(self, key: str) -> int:
        if self.down:
            raise ConnectionError("redis is down")
        return 1 if self.keys.pop(key, None) is not None else 0


def test_a_task_waiting_in_the_queue_is_not_sent_again_until_it_was_handled():
    client, sent = FakeRedis(), []
    enqueue = EnqueueOnce(client, URL, 300, sent.append)
    enqueue(7)
    enqueue(7)  # the next tick, while the first message waits
    enqueue(8)
    assert sent == [7, 8]
    enqueue.finished(7)  # a worker ran it (or found it taken)
    enqueue(7)  # due again later (deferred, retried): it goes out
    assert sent == [7, 8, 7]
    assert set(client.keys.values()) == {300}  # markers expire after the lease


def test_a_failed_send_leaves_no_marker_and_a_failed_clear_is_only_logged():
    client = FakeRedis()

    def broken(task_id: int) -> None:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        EnqueueOnce(client, URL, 5, broken)(1)
    assert client.keys == {}
    sent: list[int] = []
    enqueue = EnqueueOnce(client, URL, 5, sent.append)
    enqueue(1)
    client.down = True
    enqueue.finished(1)  # logged; the marker expires on its own
    with pytest.raises(ConnectionError):
        enqueue(2)  # the tick fails, as it did without markers
    assert sent == [1]


def test_markers_are_named_after_the_tasks_table_not_the_connection_details():
    same = task_scope(URL.replace("postgres@", "worker:secret@") + "&application_name=w")
    assert same == task_scope(URL)
    assert task_scope(URL) != task_scope(URL.replace("s1", "s2"))
    assert task_scope(URL) != task_scope("sqlite:////tmp/automation.db")


def test_markers_and_queue_keys_live_under_the_broker_namespace(monkeypatch):
    from workers.broker import make_broker

    monkeypatch.setenv("AUTOMATION_BROKER_NAMESPACE", "run7")
    broker = make_broker("redis://localhost:6379/11")  # connects on first use only
    assert broker.namespace == "run7"
    assert make_broker("redis://localhost:6379/11", "other").namespace == "other"
    enqueue = EnqueueOnce(FakeRedis(), URL, 5, lambda task_id: None, namespace="run7")
    assert enqueue.key(3).startswith("run7:") and enqueue.key(3).endswith(":3")
