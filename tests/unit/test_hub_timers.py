"""The worker's event-loop timers (workers/hub_timers.py), on kombu's own timer: a cancelled timer
leaves the heap at the next sweep, not at the time it was set for; the rest fire as before."""

from __future__ import annotations

from kombu.asynchronous.timer import Timer

from workers.hub_timers import drop_cancelled


def test_cancelled_timers_leave_the_heap_and_the_rest_fire_in_order():
    timer, fired = Timer(), []
    # As Celery's pool sets them: one hard time limit per task, most cancelled when it ends.
    entries = [timer.call_at(1_000 + n, fired.append, (n,)) for n in range(100)]
    for n, entry in enumerate(entries):
        if n % 10:
            timer.cancel(entry)
    scheduler = iter(timer)  # as kombu's Hub does: one iterator over the same heap, before and after
    assert len(timer) == 100

    assert drop_cancelled(timer) == 90
    assert len(timer) == 10
    assert drop_cancelled(timer) == 0  # nothing more to drop

    # The heap is still one: what is due fires in time order (eta 1,000 + n is long past).
    for _ in range(10):
        _, entry = next(scheduler)
        assert entry is not None
        entry()
    assert fired == list(range(0, 100, 10))
    assert len(timer) == 0


def test_a_timer_cancelled_after_the_sweep_waits_for_the_next():
    timer, fired = Timer(), []
    kept, later = timer.call_at(1_000, fired.append, (1,)), timer.call_at(2_000, fired.append, (2,))
    assert drop_cancelled(timer) == 0
    timer.cancel(later)
    assert len(timer) == 2
    assert drop_cancelled(timer) == 1
    assert [item.entry for item in timer._queue] == [kept]
