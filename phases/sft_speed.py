"""The `sft` step's speed pieces: fused kernels (Liger-Kernel) and the throughput record.

Not runnable; ``phases/sft.py`` (``load_for_training``, ``run_sft``) uses them. Tests:
``.venv/bin/pytest tests/unit/test_sft_kernels.py`` (the resolve rule, no torch) and
``.venv/bin/pytest -m integration tests/integration/test_sft_fast_trainer.py`` (the manifest's
``kernels`` and ``throughput`` on CPU). Liger runs on CUDA only, so its patching is exercised by
``benchmarks/bench_sft.py`` (variants ``step_liger``, ``runner``) on a GPU.

- ``params.sft.kernels``: ``auto`` | ``liger`` | ``none`` (``KERNEL_CHOICES``). ``resolve_kernels``
  is the rule: ``none`` -> no patch; not CUDA -> none for ``auto``, ``ConfigError`` for ``liger``
  (Triton kernels, CUDA only); CUDA without an importable ``liger_kernel`` -> none for ``auto``
  (reason logged), ``ConfigError`` for ``liger``; an architecture outside ``LIGER_ARCHS`` -> the
  same split. Otherwise Liger's ``rope``, ``rms_norm`` and ``swiglu`` (``LIGER_KERNELS``).
- ``apply_liger(model)``: Liger's own ``apply_liger_kernel_to_<arch>(rope=True, rms_norm=True,
  swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)`` on the loaded
  HF model *before* PEFT wraps it. On the instance it rebinds ``forward`` of every decoder layer's
  ``mlp`` (SwiGLU: it still calls ``self.gate_proj``/``up_proj``/``down_proj``, so the LoRA or
  bitsandbytes ``Linear4bit`` layers PEFT puts there later are the ones called) and of every
  RMSNorm (the weight stays the module's own, fp32 after ``prepare_model_for_kbit_training``). RoPE
  is patched by rebinding ``apply_rotary_pos_emb`` in the architecture's modeling module (the
  attention forward looks it up there at call time), and the RMSNorm/MLP class names there are
  rebound too; ``LigerPatch.restore()`` puts every rebound name of that module back (``run_sft``
  calls it when training ends or fails), so the kernels live exactly as long as the training call.
  The loss is never Liger's (the project's fused linear + CE stays, ``phases/sft_fast.py``).
- ``params.sft.compile``: ``auto`` | ``layers`` | ``off`` (``COMPILE_CHOICES``). ``layers`` =
  ``torch.compile`` (Inductor, ``dynamic=True``) of every decoder layer in place, after PEFT has
  wrapped the linears, so the LoRA side paths (dropout, the two small matmuls, the add), the norms,
  RoPE and SwiGLU are traced and fused with the layer; one compiled graph serves every layer
  (regional compilation: the layers share their code) and the token-budget batches' changing shapes
  are symbolic, not a recompile each. Not with nf4 (bitsandbytes' ``Linear4bit`` breaks the graph)
  nor with gradient checkpointing (unmeasured): ``resolve_compile`` says why, and refuses an
  explicit ``layers`` there. ``auto`` = ``AUTO_COMPILE`` (see its comment: what the H200 rows
  decided). The loss stays outside the compiled layers (the project's fused linear + CE), but its
  chunk math (upcast, logsumexp, softmax, one-hot subtraction) is compiled with them
  (``COMPILE_LOSS``; the fast trainer only, ``CompileChoice.loss`` says whether it ran).
- ``throughput_callback``: a ``TrainerCallback`` timing this attempt's optimizer steps after
  ``warmup_steps`` (kernel compilation, Triton autotuning and allocator growth happen there),
  synchronising CUDA at the window's edges; ``record()`` is the manifest's
  ``metrics.throughput``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from runner.errors import ConfigError

__all__ = ["COMPILE_CHOICES", "AUTO_COMPILE", "COMPILE_LOSS", "CompileChoice", "resolve_compile", "compile_layers", "KERNEL_CHOICES", "LIGER_ARCHS", "LIGER_KERNELS", "KernelChoice", "resolve_kernels", "liger_import_error",
           "LigerPatch", "apply_liger", "throughput_callback", "THROUGHPUT_WARMUP_STEPS"]

KERNEL_CHOICES = ("auto", "liger", "none")
#: model_type -> Liger's instance patch function (same signature for both: rope, cross_entropy,
#: fused_linear_cross_entropy, rms_norm, swiglu, model); Qwen2.5 is qwen2, SmolLM2 is llama
LIGER_ARCHS = {"qwen2": "apply_liger_kernel_to_qwen2", "llama": "apply_liger_kernel_to_llama"}
LIGER_KERNELS = ("rope", "rms_norm", "swiglu")
COMPILE_CHOICES = ("auto", "layers", "off")
#: what ``compile: auto`` does where compiled layers can apply (CUDA, no nf4, no checkpointing, kernels
#: not liger): True since the H200 rows of ``benchmarks/bench_sft.py`` (2026-12-01, one process per
#: size): the compiled step 2.63x (1.5B) and 1.76x (7B) the step with Liger kernels, and
#: ``benchmarks/check_sft_compile.py`` (loss, gradients, causality, loss curve vs eager);
#: docs/performance.md "Issue 15, third run".
AUTO_COMPILE = True
#: compiled layers bring the fast trainer's fused loss with them (``phases.sft_fast.compiled_ce_chunk``:
#: each chunk's softmax and gradient as Inductor kernels); ``benchmarks/bench_sft.py`` variant
#: ``step_compile_layers`` sets it False in its process to time the layers alone beside it
COMPILE_LOSS = True
#: optimizer steps of an attempt left out of the throughput window (at most; see Throughput)
THROUGHPUT_WARMUP_STEPS = 3


@dataclass
class KernelChoice:
    """What ``resolve_kernels`` decided: ``applied`` kernels (empty = none) and why."""

    requested: str
    applied: tuple[str, ...] = ()
    reason: str = ""

    def record(self) -> dict:
        """The manifest's / log event's ``kernels``: requested, applied, reason, library."""
        return {"requested": self.requested, "applied": list(self.applied), "reason": self.reason,
                "library": "liger-kernel" if self.applied else None}

    @property
    def label(self) -> str:
        return f"liger ({', '.join(self.applied)})" if self.applied else "none"


def liger_import_error() -> str | None:
    """None when Liger's patch functions import here, else the import error as text."""
    try:
        import liger_kernel.transformers.monkey_patch  # noqa: F401  (imports triton and transformers)
    except Exception as e:  # ImportError, or triton failing to initialise
        return f"{type(e).__name__}: {e}"[:300]
    return None


def resolve_kernels(value: object, device: str, model_type: str | None = None,
                    import_error: Callable[[], str | None] = liger_import_error, compiled: bool = False) -> KernelChoice:
    """The ``params.sft.kernels`` rule (see the module docstring).

    ``device``: the resolved device ("cpu", "cuda", "cuda:1"...). ``model_type``: the loaded
    model's ``config.model_type``; None checks everything but the architecture (called before the
    model is loaded, so a bad setting fails before a long load). ``import_error`` is only called on
    CUDA. Raises ``ConfigError`` naming ``params.sft.kernels`` for a value outside
    ``KERNEL_CHOICES`` and for ``liger`` where it cannot apply.
    """
    if value not in KERNEL_CHOICES:
        raise ConfigError(f"params.sft.kernels = {value!r}; allowed: {', '.join(KERNEL_CHOICES)} "
                          "(auto = Liger's fused kernels on CUDA when liger-kernel is installed, else none)")
    if value == "none":
        return KernelChoice("none", (), "params.sft.kernels: none")
    if compiled:  # resolve_compile refuses compile: layers with kernels: liger, so this is auto
        return KernelChoice("auto", (), "compiled layers: Inductor fuses RoPE, RMSNorm and SwiGLU itself "
                                        "(Liger's Triton kernels fail inside torch.compile)")
    why_not = None
    if not str(device).startswith("cuda"):
        why_not = f"device {device}: Liger's kernels are Triton, CUDA only"
    else:
        err = import_error()
        if err:
            why_not = f"liger_kernel is not importable here ({err}); pip install liger-kernel"
        elif model_type is not None and model_type not in LIGER_ARCHS:
            why_not = (f"architecture {model_type!r} is not one the step patches with Liger "
                       f"({', '.join(sorted(LIGER_ARCHS))})")
    if why_not:
        if value == "liger":
            raise ConfigError(f"params.sft.kernels = 'liger' cannot apply: {why_not}. Set params.sft.kernels "
                              "to auto (Liger where it can run, else none) or none.")
        return KernelChoice("auto", (), why_not)
    return KernelChoice(str(value), LIGER_KERNELS, "CUDA, liger_kernel importable"
                        + (f", architecture {model_type}" if model_type else ""))


@dataclass
class LigerPatch:
    """Undo record of ``apply_liger``: the modeling module and its names before patching."""

    module: object = None
    saved: dict = field(default_factory=dict)
    version: str | None = None

    def restore(self) -> None:
        """Rebind every name of the modeling module that Liger changed (idempotent)."""
        if self.module is None:
            return
        names = vars(self.module)
        for k, v in self.saved.items():
            if names.get(k) is not v:
                setattr(self.module, k, v)
        self.module = None


def apply_liger(model, model_type: str) -> LigerPatch:
    """Patch Liger's rope, rms_norm and swiglu into ``model`` (an HF causal LM, not yet PEFT-wrapped).

    Returns the ``LigerPatch`` whose ``restore()`` undoes the module-level rebinding; on an error
    inside Liger the module is restored before the error propagates.
    """
    import importlib

    import liger_kernel
    from liger_kernel.transformers import monkey_patch

    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    patch = LigerPatch(mod, dict(vars(mod)), getattr(liger_kernel, "__version__", None))
    try:
        getattr(monkey_patch, LIGER_ARCHS[model_type])(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                                       fused_linear_cross_entropy=False, model=model)
    except BaseException:
        patch.restore()
        raise
    if patch.version is None:
        try:
            from importlib.metadata import version

            patch.version = version("liger-kernel")
        except Exception:
            pass
    return patch


@dataclass
class CompileChoice:
    """What ``resolve_compile`` decided: ``applied`` (compile the decoder layers or not) and why;
    ``layers`` is filled by ``compile_layers``."""

    requested: str
    applied: bool = False
    reason: str = ""
    layers: int = 0
    loss: bool = False  # the fast trainer's fused loss compiled too (phases/sft.py load_for_training sets it)

    def record(self) -> dict:
        """The manifest's / log event's ``compile``."""
        return {"requested": self.requested, "applied": self.applied, "reason": self.reason, "layers": self.layers,
                "loss": self.loss}

    @property
    def label(self) -> str:
        return (f"compiled layers ({self.layers})" + (" + loss" if self.loss else "")) if self.applied else "not compiled"


def resolve_compile(value: object, device: str, quantization: str | None, grad_ckpt: bool,
                    kernels: object = "auto") -> CompileChoice:
    """The ``params.sft.compile`` rule (module docstring). Raises ``ConfigError`` naming the key for
    a value outside ``COMPILE_CHOICES`` and for ``layers`` where compiled layers are not supported
    (nf4, checkpointing, or ``kernels: liger``: Liger's Triton kernels fail inside torch.compile,
    an AssertionError in Dynamo's Triton wrapper on the H200). Decided before the kernels: where
    compiled layers apply, ``kernels: auto`` resolves to none (``resolve_kernels(compiled=True)``)."""
    if value not in COMPILE_CHOICES:
        raise ConfigError(f"params.sft.compile = {value!r}; allowed: {', '.join(COMPILE_CHOICES)} "
                          "(layers = torch.compile every decoder layer; auto = what the benchmark decided)")
    if value == "off":
        return CompileChoice("off", False, "params.sft.compile: off")
    why_not = fix = None  # why compiled layers cannot apply, and the other setting that would let them
    if kernels == "liger":
        why_not, fix = "params.sft.kernels is liger (Liger's Triton kernels fail inside torch.compile)", "params.sft.kernels: auto"
    elif not c_compiler():
        why_not = "no C compiler on PATH (Inductor and Triton build their kernels' launchers with one; apt-get install gcc)"
    elif quantization:
        why_not = f"quantization {quantization}: bitsandbytes' 4-bit linears are not compiled (unmeasured)"
        fix = "params.sft.quantization: none"
    elif grad_ckpt:
        why_not = "gradient checkpointing is on (compiled layers under checkpointing are not measured)"
        fix = "params.sft.gradient_checkpointing: off"
    if why_not and value == "layers":
        raise ConfigError(f"params.sft.compile = 'layers' cannot apply: {why_not}. Set params.sft.compile to "
                          "auto or off" + (f", or {fix}" if fix else "") + ".")
    if why_not:
        return CompileChoice("auto", False, why_not)
    if value == "auto" and not (AUTO_COMPILE and str(device).startswith("cuda")):
        return CompileChoice("auto", False, "auto: compiled layers are not the default (AUTO_COMPILE, "
                             "phases/sft_speed.py)" if str(device).startswith("cuda") else
                             f"auto: device {device} (compiled layers are the default on CUDA only)")
    return CompileChoice(str(value), True, f"device {device}, no quantization, no checkpointing")


def c_compiler() -> str | None:
    """The C compiler Inductor/Triton would use ($CC, else cc, gcc or clang on PATH), or None."""
    import os
    import shutil

    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def decoder_layers(model):
    """The ``nn.ModuleList`` of decoder layers inside ``model`` (HF or PEFT-wrapped): the first
    module list named ``layers`` (``model.layers`` for qwen2 and llama)."""
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(mod):
            return mod
    raise ValueError(f"{type(model).__name__}: no decoder layer list ('layers') found to compile")


def compile_layers(model, choice: CompileChoice) -> CompileChoice:
    """``torch.compile`` every decoder layer of ``model`` in place when ``choice.applied``
    (``nn.Module.compile``: the parameters and state-dict keys stay as they are, so checkpoints and
    adapters save as without compilation). Compilation itself happens at the first forward."""
    if choice.applied:
        layers = decoder_layers(model)
        for layer in layers:
            layer.compile(dynamic=True)
        choice.layers = len(layers)
    return choice


def throughput_callback(cuda: bool):
    """A ``TrainerCallback`` timing this attempt's optimizer steps; its ``record()`` is the
    manifest's ``metrics.throughput`` (None when no step ran).

    The window opens at the start of the attempt's optimizer step ``start + w`` with
    ``w = min(THROUGHPUT_WARMUP_STEPS, (n - 1) // 2)`` for ``n`` steps to run in this attempt (so a
    short run keeps at least half of its steps) and closes at the end of the last step run;
    evaluations and checkpoint saves between steps inside the window are counted. CUDA is
    synchronised at each step end (the fast trainer already synchronises once a step to count
    tokens). Tokens are ``state.num_input_tokens_seen`` (real tokens; the fast trainer counts them,
    TRL's path may leave it 0, then ``tokens_per_s`` is None). ``median_step_s`` and
    ``slowest_step_s`` describe the window's steps (begin to end of each): a slowest step far above
    the median is a stall (a recompile, allocator growth) inside the window.
    """
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.start = self.warm = self.step0 = self.step1 = self.tok0 = self.tok1 = 0
            self.tokens_at_begin = 0  # num_input_tokens_seen when train() began (a checkpoint's count on resume)
            self.durations: list[float] = []  # each timed optimizer step, begin to end
            self.begun = 0.0

        @staticmethod
        def _now() -> float:
            if cuda:
                import torch

                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            self.start, self.tokens_at_begin = state.global_step, int(state.num_input_tokens_seen or 0)
            n = max(int(state.max_steps) - state.global_step, 0)
            self.warm = max(0, min(THROUGHPUT_WARMUP_STEPS, (n - 1) // 2))
            self.t0 = self.t1 = None

        def on_step_begin(self, args, state, control, **kw):
            if self.t0 is None and state.global_step == self.start + self.warm:
                self.t0, self.tok0, self.step0 = self._now(), int(state.num_input_tokens_seen), state.global_step
                self.durations = []
            if self.t0 is not None:  # the previous step's end synchronised already: no second sync per step
                self.begun = time.perf_counter() if self.t1 is not None else self.t0

        def on_step_end(self, args, state, control, **kw):
            if self.t0 is not None:
                self.t1, self.tok1, self.step1 = self._now(), int(state.num_input_tokens_seen), state.global_step
                self.durations.append(self.t1 - self.begun)

        def record(self) -> dict | None:
            if self.t0 is None or self.t1 is None:
                return None
            seconds, tokens = self.t1 - self.t0, self.tok1 - self.tok0
            d = sorted(self.durations)
            return {"warmup_steps": self.warm, "steps": self.step1 - self.step0, "seconds": round(seconds, 4),
                    "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
                    # one slow step far above the median = a compile or allocator stall inside the window
                    "median_step_s": round(d[len(d) // 2], 4) if d else None, "slowest_step_s": round(d[-1], 4) if d else None}

    return Throughput()
