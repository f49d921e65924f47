"""The reviewer's system prompt and the prompt hash that memoization keys on.

Library module (no command). The prompt is the same for every pipeline: the runner knows
nothing of the experiment, whose description comes from the pipeline (`Pipeline.goal`, or the
config's ``goal:``) inside the request. Any edit to SYSTEM_PROMPT, the verdict schema, the request
format or the request bound changes `prompt_hash`, so old verdicts are not reused for a
different question.

`full_prompt_text(system, user)` is the exact text written to `<gate>-<key>.request.md` and,
for the `command` backend, the exact bytes (UTF-8) written to the command's stdin. The
`openai` backend sends the same two parts as a system and a user message.
"""
from __future__ import annotations

from .request import RENDER_VERSION, canonical_json, sha256_hex
from .verdict import VERDICT_SCHEMA

PROMPT_VERSION = "gate-review/2"
PROMPT_SEPARATOR = "\n\n---\n\n"

SYSTEM_PROMPT = """\
You are the methodology reviewer at a gate of a research pipeline. The request describes the \
experiment as its pipeline declares it (section "The experiment"); judge the run against that \
description and nothing you assume beyond it.

Your job at this gate: decide whether the run may proceed, judging ONLY from the gate \
criteria and the evidence given (check results with their measured values and the thresholds \
the run is configured with, summaries, manifests, and a fixed-seed random sample of items for \
spot checks). Check in particular:
- Are the gate criteria met, with numbers that support it (not just asserted)? Thresholds are \
the ones in the evidence; do not substitute your own.
- Data quality in the spot-check samples: degenerate, repetitive, truncated or off-format \
items; refusals or assistant-style text that suggests contamination by an instruction-tuned \
model; leakage between training and evaluation data.
- Methodological soundness: sample sizes, seeds, controls and baselines, statistical \
uncertainty, whether the comparison is fair, whether the configuration matches what the \
stage intends.
- Provenance: do the manifests show the expected models, data, seeds and versions?
Spot checks are a sample: weigh them as evidence, not as the whole data.

Decide one of:
- GO: criteria met and no methodological problem that should block the next stage.
- MODIFY: the run can proceed only after specific, concrete changes (list them in \
requested_changes, each actionable, e.g. a config value to change and why).
- NO-GO: a fundamental problem; the stage should not proceed as designed (say what is wrong).
If the evidence is insufficient to judge, answer MODIFY and request the missing evidence.

Answer with a single JSON object and nothing else, with exactly these keys: "decision" \
(GO, NO-GO or MODIFY), "summary" (one short paragraph), "reasons" (list of short strings \
citing the evidence), "requested_changes" (list of actionable strings; empty for GO).\
"""


def prompt_hash(max_request_chars: int) -> str:
    """sha256 of everything that shapes the question besides the inputs themselves."""
    return sha256_hex(
        canonical_json(
            {
                "prompt_version": PROMPT_VERSION,
                "system_prompt": SYSTEM_PROMPT,
                "schema": VERDICT_SCHEMA,
                "render_version": RENDER_VERSION,
                "max_request_chars": max_request_chars,
            }
        )
    )


def full_prompt_text(system: str, user: str) -> str:
    """System prompt + separator + rendered request: the audited, exact request text."""
    return system + PROMPT_SEPARATOR + user
