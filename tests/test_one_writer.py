"""One writer per output: a second run on the same --out is refused at once, naming the first; a run killed by SIGKILL
leaves a lock file that the next run takes over; nested locks of one process share; nothing is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multiview.errors import OutputBusyError, OutputError
from multiview.outputs import lock_path, output_lock, staged_dir
from orbit4d.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from multiview.outputs import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")  # fmt: skip


def _holder(out: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_and_a_killed_holder_is_taken_over(tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    holder = _holder(out)
    try:
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == holder.pid and "output_lock" not in record["command"]
        with pytest.raises(OutputBusyError, match=rf"{out} is being written by process {holder.pid} "):
            with staged_dir(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).is_file()  # the killed holder could not clean up; the kernel released its lock
    with staged_dir(out) as stage:
        (stage / "done.txt").write_text("complete")
    assert (out / "done.txt").read_text() == "complete"
    assert f"taking over the lock of process {holder.pid}" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # lock file and staging folder gone


def test_nested_locks_share_and_leave_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    with output_lock(out):
        with staged_dir(out) as stage:  # the command holds it; its own staged output shares it
            (stage / "a.txt").write_text("a")
        assert lock_path(out).is_file()
    assert not lock_path(out).exists() and (out / "a.txt").is_file()
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "made" / "for" / "out"):
            raise RuntimeError("the command failed")
    assert not (tmp_path / "made").exists()  # folders made for the lock are removed when left empty


def test_an_unwritable_output_is_one_line(tmp_path):
    for out, words in ((Path("/proc/orbit4d-test/out"), "cannot write in /proc"),
                       (tmp_path / "file" / "out", "is a file, not a folder")):  # fmt: skip
        if "file" in str(out):
            (tmp_path / "file").write_text("in the way")
        with pytest.raises(OutputError, match=words):
            with output_lock(out):
                pass


@pytest.mark.usefixtures("one_thread")
def test_two_trainings_on_one_scene(tmp_path, capsys):
    """`orbit4d train CAPTURE --out X` twice at once: the second is refused at once, naming the first (it used to
    replace the first one's scene); the first, SIGKILLed, does not block the next run."""
    from hostile_corpus import _captures

    capture = _captures(tmp_path / "inputs", {})["capture"]
    out = tmp_path / "scene"
    common = ["train", str(capture), "--out", str(out), "--device", "cpu", "--init-points", "200", "--preset",
              "preview"]  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "orbit4d", *common, "--steps", "1000000"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not lock_path(out).is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first training ended early"
        tic = time.monotonic()
        code = main([*common, "--overwrite"])
        seconds = time.monotonic() - tic
        err = " ".join(capsys.readouterr().err.split())
        assert code == EXIT_USER_ERROR and seconds < 10, (seconds, err)
        assert f"is being written by process {first.pid} (orbit4d train {capture}" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main([*common, "--steps", "3"]) == 0
    assert (out / "splats.ply").is_file() and not lock_path(out).exists()
    assert f"taking over the lock of process {first.pid}" in " ".join(capsys.readouterr().err.split())
