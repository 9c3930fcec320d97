"""train.threads=0 (auto): torch's thread count lowered to the cores other processes leave free."""
import subprocess
import sys

import pytest
import torch

from tinyrlhf.train import threads as T


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "_DEFAULT", 4)
    monkeypatch.setattr(T, "_LAST_NOTE", None)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("load, ncpu, want", [
    (0.0, 4, 4), (0.3, 4, 4), (1.0, 4, 3), (1.6, 4, 2), (3.9, 4, 1), (8.0, 4, 1),  # never below one
    (0.0, 16, 4),  # never above torch's own count
    (1.0, 2, 1), (0.45, 2, 2), (0.55, 2, 1),  # a core more than half busy counts as busy
])
def test_pick_by_value(load, ncpu, want):
    assert T.pick(4, (load, ncpu)) == want


def test_pick_without_a_sample_keeps_torch_default():
    assert T.pick(3, None) == 3


def test_busy_cores_from_two_readings():
    readings = iter([(100, 1000, 2), (400, 1600, 2)])  # 300 busy of 600 jiffies on 2 CPUs: one core busy
    load, ncpu = T.busy_cores(read=lambda: next(readings), sleep=lambda s: None)
    assert (load, ncpu) == (1.0, 2)
    assert T.busy_cores(read=lambda: None, sleep=lambda s: None) is None


def test_apply_auto_lowers_and_says_so_once(capsys):
    assert T.apply(0, sample=lambda: (3.0, 4)) == 1
    assert torch.get_num_threads() == 1
    assert T.apply(0, sample=lambda: (3.0, 4)) == 1
    err = capsys.readouterr().err
    assert err.count("train.threads=auto") == 1 and "using 1 thread " in err
    assert T.apply(0, sample=lambda: (0.0, 4)) == 4  # the machine freed up: back to torch's count, silently
    assert torch.get_num_threads() == 4 and capsys.readouterr().err == ""


def test_apply_explicit_and_env_are_not_second_guessed(monkeypatch):
    busy = lambda: (4.0, 4)  # noqa: E731
    assert T.apply(2, sample=busy) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert T.apply(0, sample=busy) == 4  # the user's environment decided: torch's count stays


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_spinning_process_is_seen_as_a_busy_core():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+20\nwhile time.time()<t: pass"])
    try:
        import time
        time.sleep(0.3)
        load, ncpu = T.busy_cores(window=0.5)
        assert ncpu >= 1 and load >= 0.6, (load, ncpu)
    finally:
        spin.kill()
        spin.wait()
