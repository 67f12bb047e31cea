"""The one fault-injection grammar (DRAY_FAULTS) and its registry, used by the broker and the pipelines."""

import threading

import pytest

from dray_broker.faults import ALWAYS, Faults, FaultSpecError, InjectedCrash, ProcessCrash, parse


def test_the_grammar():
    assert parse("") == {}
    assert parse("drop-produce-response=3, stage.mid_write ,commit.before=always,") == {
        "drop-produce-response": 3, "stage.mid_write": 1, "commit.before": ALWAYS}


@pytest.mark.parametrize("spec", ["x=0", "x=-1", "x=two", "=3", "x=1:crash"])
def test_a_malformed_spec_is_refused_with_the_item_named(spec):
    with pytest.raises(FaultSpecError, match=f"DRAY_FAULTS: .*{spec!r}"):
        parse(spec)


def test_a_fault_fires_as_many_times_as_armed():
    faults = Faults("drop-produce-response=2,publish.before_swap=always")
    assert [faults.fire("drop-produce-response") for _ in range(3)] == [True, True, False]
    assert all(faults.fire("publish.before_swap") for _ in range(50))
    assert not faults.fire("never-armed")
    faults.disarm("publish.before_swap")
    assert not faults.fire("publish.before_swap")


def test_points_raise_a_retryable_failure_or_a_process_crash():
    faults = Faults("")
    faults.point("stage.before_write")  # not armed: nothing happens
    faults.arm("stage.before_write", times=1)
    with pytest.raises(InjectedCrash):
        faults.point("stage.before_write")
    faults.point("stage.before_write")  # its one firing is used
    faults.arm("commit.after", times=ALWAYS, crash=True)
    for _ in range(2):
        with pytest.raises(ProcessCrash):
            faults.point("commit.after")
    assert not issubclass(ProcessCrash, Exception)  # retry policies, which catch Exception, do not retry it
    faults.disarm()
    faults.point("commit.after")


def test_the_environment_is_read_at_first_use(monkeypatch):
    monkeypatch.setenv("DRAY_FAULTS", "wal_gc.before_objects=1")
    faults = Faults()
    monkeypatch.setenv("DRAY_FAULTS", "retention.after_log_start")
    with pytest.raises(InjectedCrash):
        faults.point("retention.after_log_start")
    assert not faults.fire("wal_gc.before_objects")
    monkeypatch.setenv("DRAY_FAULTS", "x=nope")
    with pytest.raises(FaultSpecError):
        Faults().load()


def test_threads_share_the_firings():
    faults = Faults("stage.mid_write=100")
    fired = []

    def worker():
        fired.extend(faults.fire("stage.mid_write") for _ in range(50))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fired.count(True) == 100
