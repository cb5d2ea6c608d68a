"""Atomic file writes: a reader never sees a half-written file.

Everything goes to a temporary file in the same folder, is flushed and fsynced,
then renamed over the destination (rename is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

#: in the name of every temporary file ``atomic_path`` makes (``remove_temporaries`` finds them)
TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``.

    The temporary name keeps ``dest``'s suffix (writers such as imageio pick the
    format from it). On error the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temporary(dest, suffix or dest.suffix or ".tmp")
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temporary(dest: Path, suffix: str) -> Path:
    """Create ``.<name>.tmp-<random><suffix>`` beside ``dest``, mode 0666 less the umask (what a
    plain ``open`` gives, so the renamed file has the mode any other output has)."""
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}{TMP_MARK}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {dest}")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what ``atomic_path`` left in ``folder`` when its process was killed mid-write (not in
    subfolders); only for a folder no other process is writing into (a claimed instance's run
    folder). Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.glob(f".*{TMP_MARK}*") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


@contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``dest``; on success it takes ``dest``'s place (the old folder
    is moved aside first and removed last, so a kill leaves the old or the new folder whole,
    or the new one beside ``<dest>.old``). On error ``dest`` is untouched."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder to write into (it need not exist yet): a UserError, before any work is
    done, when it or a folder above it is a file, or when it cannot be created there."""
    from .errors import UserError

    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise UserError(f"{flag} {path} {where}; give a folder path (it is created if missing)")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing} (permission denied); give another folder")
    return path


def safe_name(text: str) -> str:
    """``text`` as one path component: anything but letters, digits and ``._+-`` becomes ``-``."""
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_settings(path: Path, allowed: Iterable[str]) -> dict[str, Any]:
    """A JSON object of settings whose keys are all in ``allowed`` (a dataclass's field names);
    a clear UserError for an unreadable file or an unknown key."""
    from .errors import UserError

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}. Fix or delete the file.") from None
    known = set(allowed)
    if not isinstance(raw, dict) or set(raw) - known:
        bad = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise UserError(f"{path}: unknown keys {bad}; allowed keys are {sorted(known)}")
    return raw
