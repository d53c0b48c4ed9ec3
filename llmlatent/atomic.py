"""Crash-safe writes: a file or folder appears complete under its final name, or not at all.

An existing output folder is replaced only when it holds a previous result of the same kind (its
marker file, e.g. ``run.json``) or is empty; ``.``, a parent of the working directory and ``$HOME``
are never replaced. Anything else is refused with one line that names the folder and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from llmlatent.errors import OutputFolderError


def _protected(out: Path) -> str | None:
    """Return why ``out`` may never be replaced (the cwd or one of its parents, $HOME, a root), else None."""
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the current directory or one of its parents"
    if resolved == Path.home().resolve():
        return "it is your home directory"
    if resolved.parent == resolved:
        return "it is a file-system root"
    return None


Marker = str | tuple[str, ...] | Callable[[Path], bool]


def check_output_dir(out: str | Path, marker: Marker, *, what: str | None = None) -> Path:
    """Return ``out`` as a Path after checking that a result can be written there; else raise OutputFolderError.

    Allowed: a missing folder (its parent must be creatable and writable), an empty folder, or a folder
    holding ``marker`` (a previous result of the same kind, which will be replaced). ``marker`` is a file
    name (or several), or a function that tells whether a folder holds a previous result of its own
    (:func:`llmlatent.experiments.runs.is_ours`); ``what`` names that result in the error. Call it before
    any computation so that a bad ``--out`` fails in a second, not after the work.
    """
    out = Path(out)
    if callable(marker):
        recognised, what = marker, what or "a previous result"
    else:
        markers = (marker,) if isinstance(marker, str) else tuple(marker)
        recognised, what = (lambda folder: any((folder / m).exists() for m in markers)), what or " or ".join(markers)
    reason = _protected(out)
    if reason:
        raise OutputFolderError(
            f"refusing to write results into {out}: {reason}; pass a new folder such as {out / 'run'}"
        )
    if out.exists() and not out.is_dir():
        raise OutputFolderError(
            f"output folder {out} is an existing file; pass a folder path (it is created if missing)"
        )
    if out.is_dir() and any(out.iterdir()) and not recognised(out):
        raise OutputFolderError(
            f"output folder {out} is not empty and holds no previous result ({what}); "
            "pass a new or empty folder, or remove it yourself"
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputFolderError(f"cannot create output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(f"cannot create output folder {out}: {parent} is not writable; pass a writable path")
    return out


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """Return a new empty temporary folder in ``parent`` with the umask's normal mode (mkdtemp makes it 0700).

    Results are renamed from such folders into place, so they must not keep mkdtemp's private mode.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    """Return the process umask (read by setting it and putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def umask_modes(folder: str | Path) -> None:
    """Give every file under ``folder`` the umask's normal file mode (0666 & ~umask; safetensors writes 0600).

    Call it on a temporary result folder before renaming it into place; folders keep their modes.
    """
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _tmp_prefix(name: str, pid: int | None = None) -> str:
    """Return the name prefix of the temporary folders of ``name`` made by process ``pid`` (default: this one)."""
    return f".{name}-pid{os.getpid() if pid is None else pid}-"


def _clean_orphans(parent: Path, name: str) -> None:
    """Remove temporary folders ``.NAME-pidN-*`` left beside ``parent/name`` by killed runs (process N is gone).

    Only folders of exactly that pattern are touched (a user's ``.NAME-backup`` is not), and never one
    whose process is still running (a concurrent run writing the same output). A run killed between
    its two renames left the previous result as ``.NAME-pidN-old`` and no ``NAME``: it is put back.
    """
    pattern = re.compile(re.escape(f".{name}-pid") + r"(\d+)-")
    for tmp in sorted(parent.iterdir()):
        match = pattern.match(tmp.name)
        if match is None or not tmp.is_dir() or tmp.is_symlink() or _alive(int(match.group(1))):
            continue
        if tmp.name == f"{_tmp_prefix(name, int(match.group(1)))}old" and not (parent / name).exists():
            with contextlib.suppress(OSError):  # a concurrent run may have put it back first
                os.replace(tmp, parent / name)
                continue
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Return True when process ``pid`` exists on this machine (or cannot be signalled: assume alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(out: str | Path, marker: Marker = "run.json") -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` that replaces ``out`` only if the block succeeds.

    ``out`` is checked by :func:`check_output_dir` first (it is replaced only when empty or when it holds
    ``marker``). The new folder gets the umask's normal mode (not mkdtemp's 0700); temporary folders of
    killed runs are removed.
    """
    out = check_output_dir(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_orphans(out.parent, out.name)
    tmp = make_temp_dir(_tmp_prefix(out.name), out.parent)
    try:
        yield tmp
        check_output_dir(out, marker)  # the folder may have changed while we computed
        if out.exists():
            old = out.with_name(f"{_tmp_prefix(out.name)}old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # put the previous result back rather than lose it
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, fsync it and rename it to ``path``.

    The file gets the umask's normal mode (0666 & ~umask), whatever mode the writer created it with
    (safetensors creates 0600).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(source: str | Path, target: str | Path) -> Path:
    """Return ``target`` after copying ``source`` there through :func:`atomic_file`: complete, or not there at all."""
    with atomic_file(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


@contextlib.contextmanager
def staged_dir(final: str | Path, prefix: str) -> Iterator[Path]:
    """Yield a new temporary folder beside ``final`` that replaces ``final`` (whatever it holds) if the block succeeds.

    For folders whose caller already knows an existing ``final`` is an invalid leftover and holds the lock
    that serialises writers (a latent shard, the converted default model); results meant for users go
    through :func:`atomic_dir`, which refuses to replace unrelated folders. The temporary folder gets the
    umask's normal mode and is removed if the block fails.
    """
    final = Path(final)
    tmp = make_temp_dir(prefix, final.parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Return None after renaming the finished folder ``tmp`` onto ``final`` (removing whatever ``final`` holds);
    ``tmp`` is removed if that fails. The second half of :func:`staged_dir`, for a caller that stages and
    commits in two steps (the latent store's pipelined shard writer)."""
    try:
        if Path(final).exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(file: str | Path) -> str:
    """Return the sha256 hex digest of a file's bytes (read in chunks)."""
    with open(file, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
