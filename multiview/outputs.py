"""Writing outputs without losing what is already there: one writer per output, temporary name first, then rename.

Every command that writes an output holds its lock (``output_lock``) from before its first check to its last rename:
``staged_dir`` takes it, and commands with work folders of their own (training's ``.<out>.partial``) or with long
work before their output is staged take it themselves around the whole run. A second run on the same output is
refused at once, naming the process that holds it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from multiview.errors import OutputBusyError, OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # not POSIX: outputs are written without a lock
    fcntl = None


def checked_out_dir(out_dir: Path, inputs: Iterable[Path] = (), option: str = "--out") -> Path:
    """``out_dir`` made absolute, once it is known that replacing it cannot destroy one of ``inputs`` (it is none of
    them and holds none of them) and that no file stands where it or a folder above it would be.
    OutputExistsError naming both otherwise; ``option``: what the user calls the output (a config file's "out")."""
    out_dir = Path(out_dir).absolute()
    resolved = out_dir.resolve()
    for source in inputs:
        source_resolved = Path(source).resolve()
        if resolved == source_resolved or resolved in source_resolved.parents:
            raise OutputExistsError(f"{option} {out_dir} would replace the input {source}: choose an {option} "
                                    "outside it")  # fmt: skip
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder: choose another {option}")
    blocking = next((folder for folder in out_dir.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise OutputExistsError(f"{option} {out_dir}: {blocking} is a file, not a folder: choose another {option}")
    return out_dir


def writable_out_dir(out_dir: Path, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """``checked_out_dir``, and OutputExistsError for an existing, non-empty ``out_dir`` unless ``overwrite``: what
    ``staged_dir`` checks first, for commands to check before long work."""
    out_dir = checked_out_dir(out_dir, inputs)
    try:
        exists = out_dir.is_dir() and any(out_dir.iterdir())
    except OSError as error:  # a folder that cannot be listed cannot be replaced either
        raise unwritable(out_dir, out_dir, error) from None
    if exists and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists and is not empty: pass --overwrite or choose another --out")
    return out_dir


@contextmanager
def staged_dir(out_dir: Path, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out_dir``; on success it replaces ``out_dir`` in one rename.

    On failure the staging folder is removed and ``out_dir`` is untouched. Refuses an existing,
    non-empty ``out_dir`` unless ``overwrite``, and an ``out_dir`` that is or holds one of ``inputs``
    (``checked_out_dir``). Holds ``out_dir``'s lock throughout (``output_lock``), so a second writer is refused.
    """
    out_dir = writable_out_dir(out_dir, overwrite, inputs)
    with output_lock(out_dir):
        writable_out_dir(out_dir, overwrite, inputs)  # again: another run may have finished it meanwhile
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        except OSError as error:
            raise unwritable(out_dir, out_dir.parent, error) from None
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, out_dir)
        os.chmod(out_dir, 0o755)


# --- one writer per output -------------------------------------------------------------------------------------

_held: dict[str, int] = {}  # lock files this process holds, and how many blocks hold each
_held_guard = threading.Lock()


def lock_path(out_dir: Path) -> Path:
    """Where the lock of ``out_dir`` lives: ``.<name>.lock`` beside it (the folder above it, links resolved)."""
    out_dir = Path(out_dir).absolute()
    if not out_dir.name:
        raise OutputError(f"--out {out_dir} is the root of the file system: choose a folder for the output")
    return Path(os.path.realpath(out_dir.parent)) / f".{out_dir.name}.lock"


@contextmanager
def output_lock(out_dir: Path, option: str = "--out") -> Iterator[Path]:
    """Hold the one-writer lock of ``out_dir`` for the block; yield ``out_dir`` (absolute).

    The lock is the kernel's (``flock`` on ``.<name>.lock`` beside ``out_dir``), so a run killed by SIGKILL or a crash
    leaves none behind: the next run takes over its lock file at once. The file names the holder (process id, host,
    command, start time), which a refused run names: OutputBusyError, raised at once. Nested blocks of one process on
    the same output share the lock. Creates the folders above ``out_dir`` as needed (removed again when the block
    ends with them empty); OutputError naming the folder when it cannot be written (permissions, /proc, a read-only
    disk). ``option``: what the user calls the output in messages (a config file's "out").
    """
    out_dir = Path(out_dir).absolute()
    path = lock_path(out_dir)
    key = str(path)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield out_dir
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    created = _make_parents(out_dir, path.parent, option)
    try:
        fd = _acquire(path, out_dir, option)
        with _held_guard:
            _held[key] = 1
        try:
            yield out_dir
        finally:
            with _held_guard:
                del _held[key]
            _release(path, fd)
    finally:
        for folder in reversed(created):  # the folders made for out_dir, where nothing else came to be written
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def unwritable(out_dir: Path, folder: Path, error: OSError, option: str = "--out") -> OutputError:
    """The one-line error for an output that cannot be written in ``folder`` (``error``: what the system said)."""
    reason = error.strerror or type(error).__name__
    return OutputError(f"{option} {out_dir}: cannot write in {folder} ({reason}): choose a folder you can write to")


def _make_parents(out_dir: Path, parent: Path, option: str) -> list[Path]:
    """Create ``parent`` and the folders above it that are missing; return those created, outermost first."""
    missing = [folder for folder in reversed([parent, *parent.parents]) if not folder.exists()]
    blocking = next((folder for folder in [parent, *parent.parents] if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise OutputExistsError(f"{option} {out_dir}: {blocking} is a file, not a folder: choose another {option}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        first = missing[0] if missing else parent
        raise unwritable(out_dir, first.parent if missing else first, error, option) from None
    return missing


def _acquire(path: Path, out_dir: Path, option: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock (holding nothing where the file system has no
    locks: some network mounts). OutputBusyError naming the holder when another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise unwritable(out_dir, path.parent, error, option) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputBusyError(f"{out_dir} is being written by {_describe(holder)}: wait for it to finish, or "
                                  f"choose another {option}") from None
        except OSError as error:  # a file system without locks (some network mounts): write as before, unguarded
            from multiview.console import warn

            warn(f"{path.parent} does not support file locks ({error.strerror}): a second run writing {out_dir} at "
                 "the same time would not be refused")  # fmt: skip
            return fd
        try:  # a holder that finished between our open and our lock has removed the file: lock the new one
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = _read_holder(fd)
    if stale:
        from multiview.console import info

        info(f"{out_dir}: taking over the lock of {_describe(stale)}, which stopped without finishing")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then let go of it (in that order: a run that opened it meanwhile sees it is gone)."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    """"process 1234 (orbit4d train cap --out scene, since 2026-12-04 10:00:00)" from a lock file's record."""
    if not holder.get("pid"):
        return "another process"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    command = str(holder.get("command", ""))
    command = command if len(command) <= 120 else command[:117] + "..."
    details = ", ".join(part for part in (command, f"since {holder['started']}" if holder.get("started") else "")
                        if part)  # fmt: skip
    return f"process {holder['pid']}{where}" + (f" ({details})" if details else "")


def _command_line() -> str:
    """This process's command line as a user would type it (``orbit4d ...`` for ``python -m orbit4d ...``)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "orbit4d"):
        program = "orbit4d"
    return " ".join([program, *(shlex.quote(arg) for arg in sys.argv[1:])]).replace("\n", " ")


def replace_dir(staging: Path, target: Path) -> None:
    """Move the folder ``staging`` to ``target``, replacing what is there (two renames, the old copy removed after)."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename). NaN and infinities, which Python's
    json would write as tokens no strict reader accepts, are written as null: a value that was not measured."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite_or_null(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
