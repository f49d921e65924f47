"""Durable file operations: atomic writes, fsync of files and directories, content hashes.

The rule the runner lives by: an output is written to a temporary path, fsynced, renamed into
place, its directory fsynced, hashed, and only then is the step committed in the database.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, UTF-8): the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Atomically write records as JSONL (sorted keys, one per line); return the count."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_json(path: Path, what: str = "file", error: type[Exception] = ValueError, fix: str = "",
              expect: type | None = dict) -> Any:
    """Read one JSON document; a missing, malformed or wrongly shaped file raises ``error``
    naming the file, what it is, and ``fix`` (what to do). ``expect=None`` accepts any JSON value.

    The project's one JSON file reader (YAML: `runner.config.read_yaml`; JSONL: `read_jsonl`)."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise error(f"{path}: {what} is missing{tail}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}){tail}") from None
    if expect is not None and not isinstance(data, expect):
        raise error(f"{path}: {what} must be a JSON {'object' if expect is dict else expect.__name__}, "
                    f"got {type(data).__name__}{tail}")
    return data


def read_jsonl(path: Path) -> list[dict]:
    """Read JSONL; a malformed line raises ValueError naming the file and line number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno}); "
                                 "the file is corrupt: re-run the step that produced it") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
            out.append(obj)
    return out


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (bottom-up)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def hash_tree(root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) for every file under ``root``, sorted by path."""
    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            out.append((p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)))
    return sorted(out)


def tree_digest(entries: list[tuple[str, int, str]]) -> str:
    """One hash for a directory's contents: names and content hashes, order-independent."""
    return sha256_text("\n".join(f"{rel}\t{digest}" for rel, _size, digest in sorted(entries)))


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst`` (same file system), replacing any old ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        trash = dst.with_name(f".trash-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)
    fsync_dir(dst.parent)
