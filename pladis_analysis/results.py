"""Tidy result tables with provenance: atomic writes, resumable runs.

Every experiment writes ``<name>.csv`` (one row per measurement) and beside it ``<name>.meta.json`` with
``git_commit``, ``created``, ``config``, ``seeds``, ``versions``, ``device`` and ``threads``. A rerun with the
same config reads the existing table and skips rows whose key columns are already present (the metadata then
also names the commits the carried rows came from); a run with another config first moves the existing table
to ``<name>_history/``, and so does :func:`write_table` for tables written whole, so a ``--quick`` run into
``results/`` never overwrites a full one. Files are written to a temporary name and renamed (the metadata
first), so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

logger = logging.getLogger("pladis_analysis.results")

_PACKAGES = ("torch", "numpy", "scipy", "pandas", "diffusers", "transformers", "entmax", "triton")


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The current commit hash (with ``-dirty`` when the tree has changes), or ``"unknown"``.

    ``PLADIS_GIT_COMMIT`` overrides it: a copy of the tree without ``.git`` (a remote GPU run) still records the
    commit it came from.
    """
    if os.environ.get("PLADIS_GIT_COMMIT"):
        return os.environ["PLADIS_GIT_COMMIT"]
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of python and the packages whose behaviour the numbers depend on."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: str | None = None) -> str:
    """A human-readable name of the device: the GPU's name for CUDA, the CPU model otherwise."""
    import torch

    if (device is None and torch.cuda.is_available()) or (device is not None and str(device).startswith("cuda")):
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device or "cuda"))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu}"


def provenance(config: dict[str, Any] | None = None, seeds: Iterable[int] | None = None,
               device: str | None = None, **extra: Any) -> dict[str, Any]:
    """The metadata every results file carries."""
    import torch

    meta = {
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config or {},
        "seeds": list(seeds) if seeds is not None else [],
        "versions": package_versions(),
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    meta.update(extra)
    return meta


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def meta_path(table_path: str | os.PathLike) -> Path:
    p = Path(table_path)
    return p.with_name(p.stem + ".meta.json")


def write_table(df: pd.DataFrame, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``df`` as CSV and its metadata beside it, each atomically (the metadata first, so a table on disk
    always has its own). A table already there from another config (``meta["config"]``) is moved to
    ``<stem>_history/`` first, with a WARNING. Returns the table's path."""
    path = Path(path)
    if path.suffix != ".csv":
        raise ValueError(f"path={str(path)!r}: results tables are CSV files ending in .csv")
    archive_if_another_config(path, meta.get("config", {}))
    _atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    _atomic_write_text(path, df.to_csv(index=False))
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table (one written with no rows is an empty frame); a missing file is an error naming the
    path and how to produce it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist; run the experiment that writes it first")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(meta_path(path).read_text())


# Config fields that say where results go, not what they are: a table moved, or the same folder spelt another
# way ("results" vs "results/" vs an absolute path), resumes.
LOCATION_FIELDS = ("out",)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"field: old → new"`` for each top-level config field that differs (compared as JSON, so a tuple in a
    dataclass config equals the list read back from disk, and NaN equals NaN), :data:`LOCATION_FIELDS` aside."""
    old, new = ({k: v for k, v in _jsonable(config).items() if k not in LOCATION_FIELDS} for config in (old, new))

    def shown(config: dict[str, Any], key: str) -> str:
        return repr(config[key]) if key in config else "absent"

    def same(key: str) -> bool:  # as JSON text: NaN == NaN there
        return json.dumps(old[key], sort_keys=True) == json.dumps(new[key], sort_keys=True)

    return [f"{key}: {shown(old, key)} → {shown(new, key)}" for key in sorted(set(old) | set(new))
            if key not in old or key not in new or not same(key)]


def archive_table(path: str | os.PathLike) -> Path:
    """Move a table and its metadata to ``<stem>_history/<stem>_<commit>.csv`` beside it (a numbered name if
    that exists); returns the new path of the table."""
    path = Path(path)
    meta = read_meta(path) if meta_path(path).exists() else {}
    commit = str(meta.get("git_commit", "unknown"))[:7]
    history = path.with_name(f"{path.stem}_history")
    history.mkdir(parents=True, exist_ok=True)
    target, n = history / f"{path.stem}_{commit}.csv", 1
    while target.exists():
        n += 1
        target = history / f"{path.stem}_{commit}_{n}.csv"
    if meta_path(path).exists():
        os.replace(meta_path(path), meta_path(target))
    os.replace(path, target)
    return target


def archive_if_another_config(path: str | os.PathLike, config: dict[str, Any]) -> bool:
    """Move the table at ``path`` to ``<stem>_history/`` (with a WARNING naming the changed fields) when it was
    written with another config, or has no metadata to tell; ``True`` if it was moved."""
    path = Path(path)
    if not path.exists():
        return False
    old = read_meta(path) if meta_path(path).exists() else {}
    changes = config_changes(old["config"], config) if "config" in old else ["metadata missing"]
    if not changes:
        return False
    moved = archive_table(path)
    logger.warning("%s was written with another config (%s); moved it to %s", path, "; ".join(changes), moved)
    return True


def _key_text(value: Any) -> str:
    """A key value as text that survives the CSV round trip: pandas reads back the 1 of a column that also holds
    1.5 as 1.0, None and NaN as NaN, and "01" as 1, so every number (and numeric text) is compared as a float."""
    if value is None:
        return "nan"
    if isinstance(value, bool):
        return str(value)
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


class ResultsTable:
    """A results table that resumes: rows whose key columns already exist on disk are not recomputed.

    >>> table = ResultsTable("results/x.csv", keys=["map", "shape"], config=cfg.to_dict(), seeds=[0])
    >>> for key in grid:
    ...     if table.has(map=..., shape=...): continue
    ...     table.add({"map": ..., "shape": ..., "ms": ...})
    ...     table.flush()          # atomic; safe to interrupt after any flush

    Rows are resumed only from a table written with an equal ``config``. A table on disk with another config
    is moved to ``<stem>_history/`` first (with a WARNING on the ``pladis_analysis.results`` logger naming
    the changed fields), not overwritten; ``resume=False`` recomputes everything and replaces the table.
    Resumption is keyed on the config alone: an experiment whose rows gain a column should add or bump a
    ``table_version`` field of its config, so that tables without the column are not resumed.
    """

    def __init__(self, path: str | os.PathLike, keys: list[str], config: dict[str, Any] | None = None,
                 seeds: Iterable[int] | None = None, device: str | None = None, resume: bool = True):
        self.path = Path(path)
        self.keys = list(keys)
        self.config = config or {}
        self.seeds = list(seeds) if seeds is not None else []
        self.device = device
        self.rows: list[dict[str, Any]] = []
        self.carried_from: list[str] = []  # commits that wrote the rows read back from disk
        self.added = 0  # rows computed by this run
        if resume and not archive_if_another_config(self.path, self.config) and self.path.exists():
            self.rows = read_table(self.path).to_dict("records")
            if self.rows:
                old_meta = read_meta(self.path)
                earlier = old_meta.get("rows_from_commits") or [old_meta.get("git_commit", "unknown")]
                self.carried_from = sorted(set(map(str, earlier)))
        self._done = {self._key(r) for r in self.rows}

    def _key(self, row: dict[str, Any]) -> tuple:
        missing = [k for k in self.keys if k not in row]
        if missing:
            raise ValueError(f"row is missing key columns {missing}; keys are {self.keys}")
        return tuple(_key_text(row[k]) for k in self.keys)

    def has(self, **key: Any) -> bool:
        return self._key(key) in self._done

    def add(self, row: dict[str, Any]) -> None:
        key = self._key(row)
        if key in self._done:  # a loop that forgot has(), or keys that do not tell rows apart
            raise ValueError(f"{self.path}: a row with key {dict(zip(self.keys, key))} is already in the table")
        self.rows.append(dict(row))
        self.added += 1
        self._done.add(key)

    def dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def flush(self, **extra_meta: Any) -> Path:
        meta = provenance(self.config, self.seeds, self.device, **extra_meta)
        if self.carried_from:  # rows read back from disk came from earlier runs, possibly at other commits
            this_run = {meta["git_commit"]} if self.added else set()
            meta["rows_from_commits"] = sorted(set(self.carried_from) | this_run)
        return write_table(self.dataframe(), self.path, meta)
