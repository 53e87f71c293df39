"""Files: reading structures, writing atomically, checking output names and folders, and
the lock that keeps two runs out of one folder. Neutral ground for every workflow
(training, learning, relaxations, reactions, the demo)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ase import Atoms

__all__ = ["read_structures", "atomic_write", "check_new_file", "check_writable_folder", "check_output_format",
           "FolderLock"]


def read_structures(path: str | os.PathLike | list, index: str = ":") -> list[Atoms]:
    """All structures of any file ASE reads (of each file, in order, for a list of files);
    a clear error if there is none."""
    from ase.io import read

    if isinstance(path, (list, tuple)):
        if not path:
            raise ValueError("an empty list of data files")
        return [atoms for p in path for atoms in read_structures(p, index)]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {str(path)!r} is empty")
    try:
        frames = read(path, index=index)
    except Exception as err:  # ASE's readers raise anything from StopIteration to KeyError on bad files
        raise ValueError(f"cannot read structures from {str(path)!r}: {type(err).__name__}: {err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{str(path)!r} holds no structures")
    return frames


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write a file atomically: ``write(tmp_path)`` into a unique temporary file in the same
    folder, then rename it over ``path`` (readers never see a half-written file, and
    concurrent writers never share a temporary name). The file gets the permissions any
    new file gets under the process's umask (a temporary file starts private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_new_file(path: str | os.PathLike, option: str = "--output") -> None:
    """Refuse, before any work, an output file that already exists (nothing is overwritten);
    ``option`` names what the user should change in the message."""
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; choose another {option} (nothing is overwritten)")


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and check that files can be written in it, so that a
    long run fails before its work rather than when it saves the results."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nemp-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write to the folder {str(folder)!r}: {err.strerror or err}") from None


def check_output_format(path: str | os.PathLike, structures: int = 1) -> str:
    """The ASE format a file of this name would be written in, checked before any work: a
    name whose format ASE cannot tell or write, or a one-structure format (POSCAR, .vasp)
    for several structures, is refused with a clear error. Returns the format's name."""
    from ase.io.formats import filetype, ioformats

    path = Path(path)
    try:
        name = filetype(str(path), read=False)
    except Exception:  # ASE raises several kinds for names it cannot place
        name = None
    fmt = ioformats.get(name) if name else None
    if fmt is None or not fmt.can_write:
        raise ValueError(f"cannot tell a format ASE writes from the file name {path.name!r}; use .extxyz "
                         "(keeps every result and flag), .traj, .xyz, .cif ...")
    if structures > 1 and fmt.single:
        raise ValueError(f"{path.name!r} would be written as {fmt.name}, which holds one structure per file; "
                         f"{structures} structures need a format such as .extxyz")
    return fmt.name


class FolderLock:
    """An exclusive lock on a run's output folder, held while the run works in it.

    A second run started in the same folder gets a clear error at once instead of
    writing over the first one's files. The lock is an advisory ``flock`` on the file
    ``.nemp.lock``: the operating system releases it when the process ends, however it
    ends, so a crashed run never leaves a stale lock behind. (Without ``fcntl``, on
    Windows, the lock is a no-op.)
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".nemp.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise FileExistsError(f"{str(self.path.parent)!r} is in use by another run ({holder}); wait for it "
                                  "to finish or pick another output folder") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} on {__import__('socket').gethostname()}\n")
        self._fh.flush()

    def release(self) -> None:
        if not self._fh.closed:
            self._fh.close()  # closing the file releases the lock
