"""Which output folders are ours, and which files in them contrastgen may replace or delete.

A folder is a contrastgen dataset only when it says so: its ``manifest.json`` (written by a finished run) or,
before the first run finishes, its claim marker ``.contrastgen`` names the format (``contrastgen.<kind>/1``)
and the contrastgen version that wrote it. Anything else that is not empty belongs to the user and is refused
before a run starts, as ``datasets.Dataset.save_to_disk`` refuses to overwrite what it did not write.
``--overwrite`` (``output.overwrite``) lets a run use such a folder, but still never touches a file contrastgen
did not write: if one of the names a dataset needs is taken (``README.md``, ``data/`` ...), it is refused too.

Inside a dataset, contrastgen replaces or deletes only the files it wrote: the card, the manifest, the plan,
raw parts, and shards listed in the manifest or in the publish ledger (:mod:`pipeline.shards.publish`).
Notes and folders a user adds survive reruns and appends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import __version__
from pipeline.errors import OutputFolderError
from pipeline.shards.writer import write_bytes_atomic

MARKER = ".contrastgen"
# The names a dataset folder is made of: with --overwrite, a foreign folder may hold none of them.
RESERVED = (
    "README.md",
    "manifest.json",
    "plan.arrow",
    MARKER,
    ".lock",
    ".publish-ledger.json",
    "data",
    "rejected",
    "raw",
    "plots",
)


def dataset_format(kind: str) -> str:
    return f"contrastgen.{kind}/1"


def _declared(path: Path) -> dict | None:
    """The ``format`` and version a manifest or marker declares, or None when it declares none."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        isinstance(obj, dict)
        and str(obj.get("format", "")).startswith("contrastgen.")
        and obj.get("contrastgen_version")
    ):
        return obj
    return None


def owner_format(root: Path) -> str | None:
    """The contrastgen format ``root`` declares (its manifest first, then its claim marker), else None."""
    for name in ("manifest.json", MARKER):
        found = _declared(Path(root) / name)
        if found is not None:
            return str(found["format"])
    return None


def _listing(root: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output(root: Path, kind: str, overwrite: bool = False) -> None:
    """Refuse ``root`` unless it is new, empty, a contrastgen ``kind`` dataset, or (``overwrite``) a folder
    whose files no dataset name collides with. Reads only."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputFolderError(
            f"--out {root}: expected a folder (new, empty, or a contrastgen dataset), found a "
            f"{'regular file' if root.is_file() else 'non-folder'}. Fix: pass another --out"
        )
    if not root.exists():
        return
    try:
        entries = list(root.iterdir())
    except PermissionError:
        raise OutputFolderError(
            f"--out {root}: expected a folder contrastgen can read and write, found one it may not "
            "read (permission denied). Fix: fix its permissions, or pass another --out"
        ) from None
    if not entries:
        return
    found = owner_format(root)
    if found == dataset_format(kind):
        return
    if found is not None:
        raise OutputFolderError(
            f"--out {root}: expected a new folder or a {dataset_format(kind)} dataset, found a "
            f"{found} dataset. Fix: pass another --out (a folder holds one kind of dataset)"
        )
    if not overwrite:
        raise OutputFolderError(
            f"--out {root}: expected a new or empty folder, or a contrastgen dataset, found a folder "
            f"that is not one (it holds {_listing(root)}). Fix: pass another --out, or add "
            "--overwrite to write into it (contrastgen never replaces files it did not write)"
        )
    taken = [n for n in RESERVED if (root / n).exists() or (root / n).is_symlink()]
    if taken:
        raise OutputFolderError(
            f"--out {root}: --overwrite writes a dataset beside your files but never replaces them, "
            f"and this folder already holds {', '.join(taken)}, which a dataset needs. "
            "Fix: pass another --out, or move those out of the way"
        )


def claim_output(root: Path, kind: str, overwrite: bool = False) -> None:
    """:func:`check_output`, then create ``root`` and write its claim marker (the folder is ours from now on)."""
    check_output(root, kind, overwrite)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if owner_format(root) is None:
            marker = {
                "format": dataset_format(kind),
                "contrastgen_version": __version__,
                "note": "this folder is a contrastgen dataset (see README.md once a run has finished)",
            }
            write_bytes_atomic(root / MARKER, (json.dumps(marker, indent=2) + "\n").encode("utf-8"))
    except PermissionError:
        raise OutputFolderError(
            f"--out {root}: expected a folder contrastgen may write, found it read-only for this "
            f"user (permission denied). Fix: fix its permissions, or pass another --out"
        ) from None
    except OSError as exc:
        raise OutputFolderError(
            f"--out {root}: cannot create the dataset folder ({os.strerror(exc.errno or 0)}). "
            "Fix: pass another --out, or free space on its file system"
        ) from None
