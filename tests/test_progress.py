"""Live progress: the plain periodic line (CI logs), the rich bar (a terminal), and the library noise filter."""

from __future__ import annotations

import io
import logging
import threading

from pipeline.progress import Meter, _DropNoise


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_come_every_period_and_at_the_end_with_rate_eta_and_counts():
    out, clock = io.StringIO(), Clock()
    m = Meter("generate negatives", 0, stream=out, every_s=10, live=False, clock=clock)
    m.grow(100)
    clock.t = 5
    m.advance(20, tokens=1000, parts=1, kept={"swap_obj": 15}, rejected={"swap_obj": 5})
    assert out.getvalue() == ""  # not yet a period
    clock.t = 10
    m.advance(20, tokens=1000, parts=1, kept={"replace_att": 18}, rejected={"replace_att": 2})
    line = out.getvalue().strip()
    # 40 of 100 units in 10 s: 200 tok/s, 60 left at 4 units/s = 15 s
    assert line == (
        "generate negatives: 40/100 units (40%), 2 parts, 200 tok/s, ETA 15s; valid 33, rejected 7 "
        "(valid/rejected by type: replace_att 18/2, swap_obj 15/5)"
    )
    clock.t = 12
    m.advance(60)
    m.close()
    m.close()  # once only
    lines = out.getvalue().strip().splitlines()
    assert (
        len(lines) == 2
        and lines[-1].startswith("generate negatives: 100/100 units (100%)")
        and lines[-1].endswith(" in 12s")
    )


def test_counts_from_many_threads_add_up():
    m = Meter("x", 8000, stream=io.StringIO(), live=False)
    threads = [
        threading.Thread(target=lambda: [m.advance(1, tokens=2, kept={"a": 1}) for _ in range(1000)]) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (m.done, m.tokens, m.kept["a"]) == (8000, 16000, 8000)


def test_a_terminal_gets_a_rich_bar_and_a_silent_meter_writes_nothing():
    out = io.StringIO()
    with Meter("train", 4, "steps", stream=out, live=True) as m:
        m.advance(4, loss="0.41")
    text = out.getvalue()
    assert "train" in text and "4/4" in text and "loss 0.41" in text
    quiet = io.StringIO()
    with Meter("train", 4, stream=quiet, live=False, silent=True) as m:
        m.advance(4)
    assert quiet.getvalue() == "" and m.done == 4


def test_library_noise_is_dropped_and_the_rest_kept():
    drop = _DropNoise()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, msg, None, None)

    assert not drop.filter(rec("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"))
    assert not drop.filter(rec("Starting temporary server on http://127.0.0.1:8129"))
    assert not drop.filter(rec("(sqlite3.OperationalError) database is locked"))
    assert drop.filter(rec("Task run 'generate_stage' - Retrying: engine timed out"))
