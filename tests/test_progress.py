"""Progress bars: in place when asked for; on the runner's console (never in a notebook) under `make paper`."""

from __future__ import annotations

from hesslib.progress import CONSOLE_PROGRESS_ENV, progress_bar


def _drive(bar):
    for _ in bar:
        pass
    bar.close()


def test_bars_are_silent_unless_asked_for_or_on_the_console(monkeypatch, capfd):
    monkeypatch.delenv(CONSOLE_PROGRESS_ENV, raising=False)
    _drive(progress_bar(range(3), desc="quiet", enabled=False))
    assert "quiet" not in "".join(capfd.readouterr())
    _drive(progress_bar(range(3), desc="shown", enabled=True))
    assert "shown" in capfd.readouterr().err
    monkeypatch.setenv(CONSOLE_PROGRESS_ENV, "1")
    _drive(progress_bar(range(3), desc="console", unit="step", enabled=False))
    err = capfd.readouterr().err  # sys.__stderr__: the kernel's inherited stderr, i.e. the runner's terminal
    assert "console" in err and "step" in err
