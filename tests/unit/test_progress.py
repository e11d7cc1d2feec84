import io

from pdata_sync.pipeline import progress
from pdata_sync.pipeline.progress import TerminalProgress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_status_line_counts_rate_and_eta_in_place():
    clock, out = Clock(), io.StringIO()
    bar = TerminalProgress(out, interval=0.5, clock=clock)
    progress.listen(bar)
    try:
        progress.planned(2000)
        clock.now += 10
        progress.advance(500, 100_000_000)  # 500 images, 100 MB in 10 s
        assert bar.line() == "500/2000 images  1,500 left  80.0 Mbit/s  ETA 0:00:30"
        shown = out.getvalue()
        assert shown.count("\r\x1b[K") == 2 and shown.endswith("ETA 0:00:30")
        clock.now += 0.1
        progress.advance(1, 0)  # within the interval: not redrawn
        assert out.getvalue() == shown
        clock.now += 29.9
        progress.advance(1499, 200_000_000)
        bar.finish()
        assert out.getvalue().endswith("2000/2000 images  0 left  60.0 Mbit/s  done in 0:00:40\n")
        assert "\n" not in out.getvalue()[:-1]  # one line, rewritten in place
    finally:
        progress.listen(None)


def test_nothing_happens_without_a_listener():
    progress.listen(None)
    progress.planned(10)
    progress.advance(3, 10)  # no error, nothing to write to


def test_log_lines_pass_above_the_status_line():
    from pdata_sync.pipeline.progress import StatusLineStream

    out = io.StringIO()
    bar = TerminalProgress(out, clock=Clock())
    bar.planned(10)
    stream = StatusLineStream(out, bar)
    stream.write("a log line\n")
    assert out.getvalue() == (
        "\r\x1b[K0/10 images  10 left  0.0 Mbit/s"
        + "\r\x1b[Ka log line\n"
        + "0/10 images  10 left  0.0 Mbit/s"
    )
    assert stream.isatty() is False  # everything else is the terminal's


def test_a_run_with_a_window_says_when_it_ends_until_nothing_is_left():
    from datetime import datetime, timedelta, timezone

    clock, out = Clock(), io.StringIO()
    bar = TerminalProgress(out, clock=clock)
    ends = datetime(2026, 12, 8, 6, 30, tzinfo=timezone(timedelta(hours=1)))
    bar.planned(4, ends)
    clock.now += 2
    bar.advance(1, 1_000_000)
    assert bar.line() == "1/4 images  3 left  4.0 Mbit/s  ETA 0:00:06  window ends 06:30"
    bar.advance(3, 0)
    assert "window" not in bar.line()
