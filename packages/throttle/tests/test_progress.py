"""Progress on its own: counters, throughput-based figures, one report per step crossed."""

from __future__ import annotations

import pytest

from headrace_throttle import ThrottleSnapshot, ThrottleState
from headrace_throttle._progress import Progress


def snapshot_of(progress: Progress) -> ThrottleSnapshot:
    return ThrottleSnapshot(
        concurrency=1,
        max_concurrency=1,
        in_flight=0,
        waiting=0,
        dispatch_interval=0.0,
        state=ThrottleState.RUNNING,
        tokens_used=None,
        tokens_remaining=None,
        completed=progress.completed,
        failed=progress.failed,
        total=progress.total,
        percentage=None,
        rate=0.0,
        eta_seconds=None,
        paused_until=None,
    )


def test_figures_come_from_throughput_and_count_failures_as_finished() -> None:
    progress = Progress(100, 10.0, None)
    assert progress.figures(5.0, None) == (0.0, 0.0, None)  # nothing admitted yet
    progress.completed, progress.failed = 15, 5
    rate, percentage, eta = progress.figures(12.5, 10.0)
    assert rate == pytest.approx(8.0)  # 20 finished in 2.5 s
    assert percentage == 20.0
    assert eta == pytest.approx(10.0)  # 80 left at 8 per second
    progress.completed = 95
    assert progress.figures(20.0, 10.0)[1:] == (100.0, 0.0)  # done (capped at 100 %)


def test_figures_without_a_total_or_with_a_zero_total() -> None:
    assert Progress(None, 10.0, None).figures(1.0, 0.0) == (0.0, None, None)
    empty = Progress(0, 10.0, print)
    assert empty.figures(1.0, 0.0) == (0.0, 100.0, 0.0)
    empty.completed = 1
    empty.tick(lambda: pytest.fail("a zero total never reports"))


def test_one_report_per_step_crossed_in_the_caller() -> None:
    reports: list[int] = []
    progress = Progress(8, 25.0, lambda snap: reports.append(snap.completed))
    assert progress.reporting
    built = [0]

    def snapshot() -> ThrottleSnapshot:
        built[0] += 1
        return snapshot_of(progress)

    for _ in range(8):
        progress.completed += 1
        progress.tick(snapshot)
    assert reports == [2, 4, 6, 8]
    assert built[0] == 4  # a snapshot only when a step is crossed
    progress.tick(snapshot)
    assert reports == [2, 4, 6, 8]


def test_no_reports_without_a_listener_or_a_total() -> None:
    silent = Progress(4, 25.0, None)
    assert not silent.reporting
    silent.completed = 4
    silent.tick(lambda: pytest.fail("nobody listens"))
    assert not Progress(None, 25.0, print).reporting


def test_a_listener_interrupt_reaches_the_caller_after_the_count() -> None:
    def listener(snap: ThrottleSnapshot) -> None:
        raise KeyboardInterrupt

    progress = Progress(2, 50.0, listener)
    progress.completed += 1
    with pytest.raises(KeyboardInterrupt):
        progress.tick(lambda: snapshot_of(progress))
    assert progress.completed == 1
    progress.completed += 1
    with pytest.raises(KeyboardInterrupt):  # the next step still reports
        progress.tick(lambda: snapshot_of(progress))
