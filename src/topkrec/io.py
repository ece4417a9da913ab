"""Safe outputs: atomic writes, checks before anything is written, recovery after a killed run.

- :func:`atomic_dir` writes a directory into a temporary sibling and swaps it in at the end, so an
  interrupted run never leaves a directory that looks complete. The swap takes two renames (old out
  away, new out in); a complete copy is renamed ``.<name>.new-<pid>-…`` *before* them, so a kill at
  any point leaves either the old or the new complete directory, which :func:`recover_interrupted`
  (called by every check below and by ``Dataset.load`` / ``train --resume``) puts back in place.
- :func:`check_output_dir` / :func:`check_output_file` refuse, before any work is done, an output
  that is, contains or lies inside an input (``--force`` would delete the input), an output under a
  file or in a directory that cannot be written, and a directory where a file is written.
- Files are created with the mode a plain ``open`` would give (0644 under the usual umask 022), not
  ``mkstemp``'s 0600, so a service running as another user can read a model directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from topkrec.errors import TopkrecError

logger = logging.getLogger(__name__)


def _read_umask() -> int:
    """The process umask, without the set-and-restore dance where /proc tells it (that dance briefly
    leaves umask 0 for every other thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_read_umask()


def _dir_mode() -> int:
    return 0o777 & ~_read_umask()


def os_error_message(e: OSError, path: Path | str, doing: str = "write") -> str:
    """One line for an OSError met while reading or writing ``path``: what, why, what to do."""
    reason = e.strerror or str(e)
    if doing == "read":
        hints = {
            errno.EACCES: "check its permissions",
            errno.EPERM: "check its permissions",
            errno.EISDIR: "it is a directory; give a file",
            errno.ENOENT: "check the path",
        }
        default = "check the path and its permissions"
    else:
        hints = {
            errno.EACCES: "check its permissions or choose another location",
            errno.EPERM: "check its permissions or choose another location",
            errno.EROFS: "the file system is read-only; choose another location",
            errno.ENOSPC: "the disk is full; free space or choose another location",
            errno.EDQUOT: "the disk quota is exhausted; free space or choose another location",
            errno.ENOTDIR: "a part of the path is a file, not a directory; choose another location",
            errno.EISDIR: "it is a directory; give a file name",
        }
        default = "check the path and its permissions"
    return f"cannot {doing} {path}: {reason}; {hints.get(e.errno or 0, default)}"


# ------------------------------------------------------------------------------------------ overlap checks
def _overlap(out: Path, inp: Path) -> str | None:
    """How ``out`` overlaps ``inp`` ("is", "contains", "lies inside"), or None. Symlinks are resolved."""
    o, i = out.resolve(), inp.resolve()
    if o == i:
        return "is"
    if o in i.parents:
        return "contains"
    if i in o.parents:
        return "lies inside"
    return None


def check_no_overlap(out: Path, inputs: Mapping[str, Path | None], flag: str = "--out") -> None:
    """Refuse an output directory that is, contains or lies inside one of ``inputs`` (flag → path):
    writing it (and with ``--force``, first deleting it) would destroy the input."""
    for in_flag, inp in inputs.items():
        if inp is None or not Path(inp).exists():  # nothing there to destroy (its own error comes later)
            continue
        how = _overlap(Path(out), Path(inp))
        if how is None:
            continue
        why = {
            "is": "writing it would replace the input",
            "contains": "replacing it would delete the input",
            "lies inside": "the output would be written into the input",
        }[how]
        place = f"outside {inp}" + (" that does not contain it" if how == "contains" else "")
        raise TopkrecError(f"{flag} {out} {how} {in_flag} {inp}: {why}; choose an {flag} {place}")


def _check_location(out: Path, flag: str) -> None:
    """The nearest existing ancestor of ``out`` must be a writable directory (not a file)."""
    parent = Path(out).absolute().parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail on it
            raise TopkrecError(f"{flag} {out}: {parent} is a broken symbolic link; choose another location")
        parent = parent.parent
    if not parent.is_dir():
        raise TopkrecError(f"{flag} {out}: {parent} is a file, not a directory; choose another location")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only_fs(parent) else "not writable"
        raise TopkrecError(f"{flag} {out}: the directory {parent} is {why}; choose another location")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_dir(
    out: Path, force: bool, inputs: Mapping[str, Path | None] | None = None, flag: str = "--out"
) -> None:
    """Refuse, before any work, an output directory that cannot or must not be written.

    That is: one that is, contains or lies inside an input (``inputs``: flag → path); one under a file
    or in a read-only directory; an existing file; an existing non-empty directory unless ``force``.
    A complete directory left by a killed run is first put back in place (:func:`recover_interrupted`).
    """
    out = Path(out)
    recover_interrupted(out)
    check_no_overlap(out, inputs or {}, flag)
    if out.exists() and not out.is_dir():
        raise TopkrecError(f"{out} exists and is not a directory; choose another {flag}")
    _check_location(out, flag)
    try:
        non_empty = out.exists() and any(out.iterdir())
    except OSError as e:
        raise TopkrecError(os_error_message(e, out, "read")) from e
    if non_empty and not force:
        raise TopkrecError(f"{out} already exists and is not empty; pass --force to overwrite it")


def check_output_location(out: Path, flag: str = "--out") -> None:
    """For a directory that is written into (not replaced): not a file, not under a file, writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TopkrecError(f"{flag} {out} is a file, not a directory; choose another {flag}")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            why = "on a read-only file system" if _read_only_fs(out) else "not writable"
            raise TopkrecError(f"{flag} {out} is {why}; choose another {flag}")
        return
    _check_location(out, flag)


def check_output_file(
    out: Path,
    inputs: Mapping[str, Path | None] | None = None,
    flag: str = "--out",
    allowed: Iterable[Path] = (),
) -> None:
    """Refuse, before any work, a file output that cannot or must not be written: a directory, a path
    under a file or in a read-only directory, an input file itself, or an existing file inside an input
    directory (except the ``allowed`` paths, e.g. evaluate's own ``<model>/metrics.json``)."""
    out = Path(out)
    if out.is_dir():
        raise TopkrecError(f"{flag} {out} is a directory; give a file name")
    _check_location(out, flag)
    allowed_resolved = {Path(a).resolve() for a in allowed}
    for in_flag, inp in (inputs or {}).items():
        if inp is None or not Path(inp).exists():
            continue
        how = _overlap(out, Path(inp))
        if how == "is" or (how == "lies inside" and out.exists() and out.resolve() not in allowed_resolved):
            what = "is the input" if how == "is" else "would replace a file of the input"
            raise TopkrecError(f"{flag} {out} {what} {in_flag} {inp}; choose another {flag}")
        if how == "contains":  # only possible when out is a directory: caught above
            raise TopkrecError(f"{flag} {out} contains {in_flag} {inp}; choose another {flag}")


# ------------------------------------------------------------------------------------------ recovery
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _sibling_kind(out: Path, p: Path) -> tuple[str, int | None] | None:
    """("tmp" | "new" | "old", writer pid or None) for a sibling written by :func:`atomic_dir`."""
    prefix = f".{out.name}."
    if not p.name.startswith(prefix):
        return None
    rest = p.name[len(prefix) :]
    kind, _, tail = rest.partition("-")
    if kind not in ("tmp", "new", "old") or not tail:
        return None
    pid_text = tail.split("-", 1)[0]
    return kind, int(pid_text) if pid_text.isdigit() else None


def recover_interrupted(out: Path) -> list[str]:
    """Repair what a run killed inside :func:`atomic_dir` left beside ``out``; returns what was done.

    - a complete copy (``.<name>.new-…``) of a dead writer replaces ``out`` (it is the newer result);
    - else, when ``out`` is missing, the previous directory (``.<name>.old-…``) is put back;
    - leftover ``.old-…`` copies and temporary ``.tmp-<pid>-…`` directories of dead writers are deleted;
      temporary directories whose writer cannot be told (older naming) are reported, not deleted.

    Siblings of a live writer are left alone. Under torchrun only rank 0 repairs.
    """
    out = Path(out)
    parent = out.absolute().parent
    if os.environ.get("RANK", "0") not in ("", "0") or not parent.is_dir():
        return []
    try:
        siblings = [(p, _sibling_kind(out, p)) for p in parent.iterdir()]
    except OSError:
        return []
    found: dict[str, list[Path]] = {"tmp": [], "new": [], "old": []}
    unknown: list[Path] = []
    for p, kind in siblings:
        if kind is None or not p.is_dir():
            continue
        name, pid = kind
        if pid is None:
            unknown.append(p)
        elif not _pid_alive(pid):
            found[name].append(p)
    done: list[str] = []
    try:
        news = sorted(found["new"], key=lambda p: p.stat().st_mtime)
        if news:
            newest = news.pop()
            if out.exists():
                aside = parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                out.rename(aside)
                found["old"].append(aside)
            newest.rename(out)
            done.append(f"recovered {out} from the complete copy {newest.name} that an interrupted run left")
            found["tmp"].extend(news)
        elif not out.exists() and found["old"]:
            previous = max(found["old"], key=lambda p: p.stat().st_mtime)
            previous.rename(out)
            found["old"].remove(previous)
            done.append(f"restored the previous {out} from {previous.name} (an interrupted run had moved it)")
        for p in [*found["old"], *found["tmp"]]:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}, left by an interrupted run")
    except OSError as e:  # another process repairing at the same time, or no permission: leave it
        logger.warning("could not repair what an interrupted run left beside %s: %s", out, e)
    for p in unknown:
        done.append(f"{p} looks like the temporary directory of an interrupted run; delete it if no run is writing it")
    for line in done:
        logger.warning("%s", line)
    return done


# ------------------------------------------------------------------------------------------ writers
@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False, inputs: Mapping[str, Path | None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to write into; put it in place of ``out`` on success.

    On any exception the temporary directory is removed, so an interrupted run never leaves a
    directory that looks complete. An existing ``out`` is replaced only when ``force`` is true. A kill
    during the final swap loses nothing (see the module docstring).
    """
    out = Path(out)
    check_output_dir(out, force, inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        # mkdtemp makes the directory 0700; give it the mode a plain mkdir would have.
        tmp.chmod(_dir_mode())
    except OSError as e:
        raise TopkrecError(os_error_message(e, out)) from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, out)


def _swap_in(tmp: Path, out: Path) -> None:
    """``tmp`` (complete) takes the place of ``out``; recoverable at every step."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new = out.parent / f".{out.name}.new-{tag}"
    tmp.rename(new)  # from here on the complete result is recoverable under a name that says so
    if out.exists():
        old = out.parent / f".{out.name}.old-{tag}"
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename (mode as ``open`` gives)."""
    path = Path(path)
    if path.is_dir():
        raise TopkrecError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise TopkrecError(os_error_message(e, path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise TopkrecError(os_error_message(e, path)) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise TopkrecError(f"{path} not found") from e
    except json.JSONDecodeError as e:
        raise TopkrecError(f"{path} is not valid JSON ({e}); the file is corrupt, recreate it") from e
    except UnicodeDecodeError as e:
        raise TopkrecError(f"{path} is not valid JSON (not UTF-8 text); the file is corrupt, recreate it") from e
    except OSError as e:
        raise TopkrecError(os_error_message(e, path, "read")) from e
