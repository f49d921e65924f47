"""vLLM backend (CUDA + vllm installed): same interface as the transformers backend.

Not runnable; built by ``load_model(..., backend="vllm")`` or ``backend="auto"`` on a CUDA
machine with vllm. Cannot run on CPU-only machines (construction raises a clear error).

- Inputs go in as token ids (``TokensPrompt``) from the loader's guarded encoder; vLLM's own
  tokenizer is not used for inputs, so no template or BOS can slip in.
- Sampling uses vLLM's per-request ``seed``: a prompt's output depends on its own seed, not on
  the batch. Stop strings, eos/stop token ids, repetition penalty and top-p map one to one.
- ``next_token_logprobs``: for each candidate, the candidate id is appended to the prompt and
  its ``prompt_logprobs`` entry is read: the exact log-probability of that token (not limited to
  a top-k), with prefix caching making the repeated prompts cheap.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

from phases.models.backends.base import (
    Backend,
    Generation,
    GenerationParams,
    check_prompts,
    resolve_seeds,
)


def vllm_environment() -> None:
    """Environment vLLM needs inside this project's processes (set only where the user has not):

    - ``VLLM_WORKER_MULTIPROC_METHOD=spawn``: a pipeline step often touched CUDA before it loads
      vLLM (another model, a device check), and vLLM's engine process cannot re-initialise CUDA in
      a forked child ("Cannot re-initialize CUDA in forked subprocess", seen on the H200).
    - ``VLLM_USE_FLASHINFER_SAMPLER=0`` when FlashInfer is not installed: vLLM 0.25 imports it
      for top-p/top-k sampling by default and its engine fails to start without it.
    """
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if importlib.util.find_spec("flashinfer") is None:
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")


def vllm_available() -> bool:
    """True if the ``vllm`` package can be imported (does not import it)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        encode: Callable[[str], list[int]],
        decode: Callable[[Sequence[int]], str],
        *,
        stop_token_ids: Sequence[int],
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        llm=None,
    ):
        if llm is None:
            if not vllm_available():
                raise ImportError("backend='vllm' needs the vllm package (pip install vllm) on a CUDA machine")
            vllm_environment()
            from vllm import LLM

            llm = LLM(
                model=model_path,
                dtype=dtype,
                enable_prefix_caching=True,
                gpu_memory_utilization=gpu_memory_utilization,
                seed=0,
            )
        self.llm = llm
        max_context = int(llm.llm_engine.model_config.max_model_len)
        super().__init__(encode, decode, max_context)
        self.stop_token_ids = [int(t) for t in stop_token_ids]

    def generate(
        self, prompts: Sequence[str], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = check_prompts(prompts)
        seeds = resolve_seeds(len(prompts), seeds)
        if not prompts:
            return []
        rows = self.encode_rows(prompts, params.max_new_tokens, params.truncation)
        sps = [
            SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature if params.do_sample else 0.0,
                top_p=params.top_p if params.do_sample else 1.0,
                repetition_penalty=params.repetition_penalty,
                stop=list(params.stop),
                stop_token_ids=self.stop_token_ids,
                seed=s,
                skip_special_tokens=False,
            )
            for s in seeds
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], sps, use_tqdm=False)
        result = []
        for r, s, o in zip(rows, seeds, outs):
            c = o.outputs[0]
            toks = tuple(int(t) for t in c.token_ids)
            if c.finish_reason == "length":
                reason = "length"
            elif isinstance(c.stop_reason, str):
                reason = "stop"
            else:
                reason = "eos"
            text = c.text if reason == "stop" else self.decode(toks[:-1] if reason == "eos" and toks else toks)
            result.append(
                Generation(text, toks, len(toks), reason == "length", reason, prompt_tokens=len(r), seed=s)
            )
        return result

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error"
    ) -> list[dict[str, float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = check_prompts(prompts)
        if not prompts:
            return []
        cands = list(candidate_tokens)
        cand_ids = self.candidate_ids(cands)
        rows = self.encode_rows(prompts, 1, truncation)
        reqs = [TokensPrompt(prompt_token_ids=r + [c]) for r in rows for c in cand_ids]
        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate(reqs, sp, use_tqdm=False)
        result = []
        k = 0
        for _ in rows:
            d = {}
            for cand, cid in zip(cands, cand_ids):
                last = outs[k].prompt_logprobs[-1]
                d[cand] = float(last[cid].logprob)
                k += 1
            result.append(d)
        return result
