"""The canonical prompt builders (completion mode, never a chat template).

Every prompt any phase sends to a base model is built here; nothing else formats prompts.
A stage config names its builders through `BUILDERS` (stages are data, templates with logic
stay in Python). Imported by the pipeline steps; not runnable on its own. Tests:
`.venv/bin/pytest tests/unit/test_prompts.py`.

Whitespace contract common to all builders:
- Prompts never end with a space or newline unless stated: the model writes the space that
  begins its answer (`Response:` → ` Paris.`), which keeps tokenization of the boundary the
  same as in natural text (a trailing space would become its own token).
- Instructions are `.strip()`ped; internal newlines are kept as given. An empty instruction
  raises `ValueError`.
- Tokenize prompts with `add_special_tokens=False` (the model layer does this).
"""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = [
    "END_MARKER",
    "DEFAULT_LIST_HEADER",
    "URIAL_END_MARKER",
    "URIAL_EXAMPLES",
    "BUILDERS",
    "get_builder",
    "canonical_builder_name",
    "RESPONSE_BUILDERS",
    "INSTRUCTION_BUILDERS",
    "FRAMING_BUILDERS",
    "BUILDER_ALIASES",
    "response_prompt",
    "instruction_generation_prompt",
    "raw_prompt",
    "urial_prompt",
    "critique_prompt",
    "revision_prompt",
    "TRANSCRIPT_HEADER",
    "transcript_prompt",
    "principle_revision_prompt",
]

END_MARKER = "###END###"

DEFAULT_LIST_HEADER = (
    "Below is a list of diverse tasks that people ask a helpful assistant to do. "
    "Each task is a single, self-contained instruction written on one line."
)


def _clean_instruction(instruction: str, what: str = "instruction") -> str:
    if not isinstance(instruction, str):
        raise ValueError(f"{what} must be a string, got {type(instruction).__name__}: {instruction!r}")
    text = instruction.strip()
    if not text:
        raise ValueError(f"{what} is empty (got {instruction!r}); drop empty instructions before building prompts")
    return text


def response_prompt(
    instruction: str,
    fewshot: Sequence[tuple[str, str]] | None = None,
    end_marker: str = END_MARKER,
) -> str:
    """Response-generation prompt: ``Instruction: {instruction}\\nResponse:``.

    Exact format (``⏎`` is ``\\n``; no trailing space after the final ``Response:``)::

        Instruction: {fewshot_instruction_1}⏎Response: {fewshot_response_1}⏎{end_marker}⏎⏎
        ...                                   (one block per few-shot pair, in the given order)
        Instruction: {instruction}⏎Response:

    Without few-shot examples the prompt is exactly ``f"Instruction: {instruction}\\nResponse:"``,
    which is also the SFT training prompt. The model continues with ``" answer..."``; the end
    marker teaches it to close its answer with ``\\n###END###``, and
    `phases.cleaning.clean_response` splits on it. Few-shot instructions and responses are
    stripped; a few-shot response containing the end marker, or an empty one, raises
    `ValueError` (it would teach the model to emit the marker mid-answer).
    """
    text = _clean_instruction(instruction)
    parts: list[str] = []
    for i, pair in enumerate(fewshot or ()):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"fewshot[{i}] must be an (instruction, response) pair, got {pair!r}")
        ex_inst = _clean_instruction(pair[0], f"fewshot[{i}] instruction")
        ex_resp = _clean_instruction(pair[1], f"fewshot[{i}] response")
        if end_marker and (end_marker in ex_resp or end_marker in ex_inst):
            raise ValueError(f"fewshot[{i}] contains the end marker {end_marker!r}; remove it from the example")
        parts.append(f"Instruction: {ex_inst}\nResponse: {ex_resp}\n{end_marker}\n\n")
    parts.append(f"Instruction: {text}\nResponse:")
    return "".join(parts)


def instruction_generation_prompt(
    examples: Sequence[str],
    start_index: int = 1,
    family: str | None = None,
    header: str = DEFAULT_LIST_HEADER,
) -> str:
    """Instruction-generation prompt: a numbered list stopped mid-list for the model to continue.

    Exact format (``⏎`` is ``\\n``)::

        {header}⏎                       (header stripped; omitted with its newline if empty)
        Topic: {family}⏎                (only when family is given; family stripped)
        ⏎
        {start_index}. {examples[0]}⏎
        {start_index+1}. {examples[1]}⏎
        ...
        {start_index+len(examples)}.

    The prompt ends with the next number and a period, no trailing space, so the model's
    completion begins with ``" next instruction"``. Parse it with
    ``phases.instructions.parse_instructions(completion, first_index=start_index + len(examples))``.
    Each example is stripped and must be a single non-empty line (``ValueError`` otherwise),
    since one line is one instruction in the list contract. At least one example is required.
    ``family`` is free text (a family description reads better than an id).
    """
    if not examples:
        raise ValueError("instruction_generation_prompt needs at least one example instruction (got none)")
    if not isinstance(start_index, int) or isinstance(start_index, bool) or start_index < 1:
        raise ValueError(f"start_index must be an int >= 1, got {start_index!r}")
    lines: list[str] = []
    if header and header.strip():
        lines.append(header.strip())
    if family is not None and family.strip():
        lines.append(f"Topic: {family.strip()}")
    if lines:
        lines.append("")
    for offset, example in enumerate(examples):
        text = _clean_instruction(example, f"examples[{offset}]")
        if "\n" in text:
            raise ValueError(f"examples[{offset}] spans several lines; list items must be one line: {text!r}")
        lines.append(f"{start_index + offset}. {text}")
    lines.append(f"{start_index + len(examples)}.")
    return "\n".join(lines)


def raw_prompt(instruction: str) -> str:
    """Raw framing for evaluation arms: the instruction alone, then one newline.

    Exactly ``f"{instruction}\\n"``. The newline tells the model that the instruction is
    finished, so it answers on the next line instead of extending the instruction's sentence.
    This is the weakest framing; the honest baseline is the best of raw, instruction/response
    and URIAL (METHOD.md, Evaluation).
    """
    return f"{_clean_instruction(instruction)}\n"


URIAL_END_MARKER = "```"

# Fixed in-context alignment examples (URIAL, Lin et al. 2023: a system-style preamble plus a
# few stylistic examples, completion mode). Written for this project; short on purpose so
# the framing does not push the model toward long answers. One is a refusal so that unsafe
# requests have a pattern to follow.
URIAL_PREAMBLE = (
    "# Instruction\n\n"
    "Below is a list of conversations between a human and an AI assistant (you).\n"
    'Users place their queries under "# Query:", and your responses are under "# Answer:".\n'
    "You are a helpful, respectful, and honest assistant.\n"
    "You answer as helpfully as possible while staying safe, and you say so when you are unsure.\n"
    "You decline requests that could cause harm, and you offer a safe alternative when there is one.\n"
    "Your answers are accurate, clear and no longer than the task needs."
)

URIAL_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 °C (212 °F) at sea level, where the air pressure is one standard "
        "atmosphere. At higher altitudes the pressure is lower, so water boils at a lower temperature.",
    ),
    (
        "List three tips for staying focused while studying, as a bulleted list.",
        "- Put your phone in another room so notifications cannot interrupt you.\n"
        "- Work in short blocks, such as 25 minutes, with a 5-minute break after each.\n"
        "- Decide before you start exactly which task you will finish in this session.",
    ),
    (
        "How can I get into my neighbor's Wi-Fi network without them knowing?",
        "I can't help with accessing someone else's network without permission; that is illegal "
        "in most places. If you need internet access, you could ask your neighbor to share the "
        "password, use a public hotspot at a library or cafe, or compare low-cost plans from "
        "local providers.",
    ),
)


def urial_prompt(instruction: str, examples: Sequence[tuple[str, str]] | None = None) -> str:
    """Few-shot in-context alignment framing (URIAL style), completion mode, no chat template.

    Exact format (``⏎`` is ``\\n``; ``FENCE`` is three backticks, `URIAL_END_MARKER`)::

        {URIAL_PREAMBLE}⏎⏎
        # Query:⏎FENCE⏎{example_query}⏎FENCE⏎⏎# Answer:⏎FENCE⏎{example_answer}⏎FENCE⏎⏎   (per example)
        # Query:⏎FENCE⏎{instruction}⏎FENCE⏎⏎# Answer:⏎FENCE⏎

    The prompt ends right after the opening fence and its newline (the one builder whose prompt
    ends with a newline: the answer starts on a fresh line, as in the examples). The model's
    answer ends at the closing fence: clean it with
    ``clean_response(raw, end_marker=URIAL_END_MARKER)`` and use it as a stop string.
    ``examples`` defaults to `URIAL_EXAMPLES`; an example containing the fence raises.
    """
    text = _clean_instruction(instruction)
    parts = [URIAL_PREAMBLE, "\n\n"]
    for i, pair in enumerate(URIAL_EXAMPLES if examples is None else examples):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"urial examples[{i}] must be a (query, answer) pair, got {pair!r}")
        query = _clean_instruction(pair[0], f"urial examples[{i}] query")
        answer = _clean_instruction(pair[1], f"urial examples[{i}] answer")
        if URIAL_END_MARKER in query or URIAL_END_MARKER in answer:
            raise ValueError(f"urial examples[{i}] contains a code fence, which ends answers in this framing")
        parts.append(f"# Query:\n```\n{query}\n```\n\n# Answer:\n```\n{answer}\n```\n\n")
    parts.append(f"# Query:\n```\n{text}\n```\n\n# Answer:\n```\n")
    return "".join(parts)


def _clean_block(text: str, what: str) -> str:
    """A response/critique/principle body: stripped, non-empty; internal newlines kept."""
    return _clean_instruction(text, what)


def critique_prompt(instruction: str, response: str, principle: str) -> str:
    """Constitutional critique framing (completion mode), for ``phases/constitution_revision.py``.

    Exact format (``⏎`` is ``\\n``; no trailing space after the final ``Critique:``)::

        Instruction: {instruction}⏎Response: {response}⏎⏎
        Principle: {principle}⏎
        Critique of the response, judged only against the principle:

    The model continues with ``" ..."``; clean the completion with
    ``phases.cleaning.clean_response(text, end_marker=None)`` (it stops at a blank line or a new
    ``Instruction:``). Every part is stripped; an empty part raises ``ValueError``.
    """
    inst = _clean_instruction(instruction)
    resp = _clean_block(response, "response")
    pr = _clean_block(principle, "principle")
    return (f"Instruction: {inst}\nResponse: {resp}\n\nPrinciple: {pr}\n"
            f"Critique of the response, judged only against the principle:")


def revision_prompt(instruction: str, response: str, principle: str, critique: str) -> str:
    """Constitutional rewrite framing (completion mode): the critique prompt, the critique, a rewrite cue.

    Exact format (``⏎`` is ``\\n``; no trailing space after the final ``Response:``)::

        {critique_prompt(instruction, response, principle)} {critique}⏎⏎
        Rewrite the response so that it follows the principle, keeping what was right.⏎
        Instruction: {instruction}⏎Revised response:

    The last two lines mirror the SFT framing, so the rewrite reads as an answer to the
    instruction, not a comment on it. Clean with ``clean_response(text, end_marker=None)``.
    """
    crit = _clean_block(critique, "critique")
    return (f"{critique_prompt(instruction, response, principle)} {crit}\n\n"
            f"Rewrite the response so that it follows the principle, keeping what was right.\n"
            f"Instruction: {_clean_instruction(instruction)}\nRevised response:")


TRANSCRIPT_HEADER = (
    "The following is a conversation between a user and a helpful assistant. The assistant answers "
    "each message, remembers everything the user said earlier in the conversation, and keeps "
    "following the user's earlier instructions unless the user changes them."
)


def transcript_prompt(history: Sequence[tuple[str, str]], user: str, header: str = TRANSCRIPT_HEADER,
                      user_label: str = "User", assistant_label: str = "Assistant") -> str:
    """Multi-turn framing (completion mode, never a chat template): a plain-text transcript.

    Exact format (``⏎`` is ``\n``)::

        {header}⏎                          (stripped; omitted with the blank line if empty)
        ⏎
        {user_label}: {u1}⏎{assistant_label}: {a1}⏎      (per earlier turn in ``history``)
        {user_label}: {user}⏎{assistant_label}:

    Ends with ``{assistant_label}:`` and no space: the model writes the space. An assistant turn
    ends where the model writes ``⏎{user_label}:`` (use it as the stop string). Turn texts are
    stripped; internal newlines are kept; an empty turn or one containing ``⏎{user_label}:`` or
    ``⏎{assistant_label}:`` raises ``ValueError`` (it would forge a turn boundary).
    """
    def clean(text: str, what: str) -> str:
        t = _clean_instruction(text, what)
        for label in (user_label, assistant_label):
            if f"\n{label}:" in "\n" + t:
                raise ValueError(f"{what} contains a turn label line '{label}:'; it would forge a turn: {t[:80]!r}")
        return t

    lines: list[str] = []
    if header and header.strip():
        lines += [header.strip(), ""]
    for i, (u, a) in enumerate(history):
        lines.append(f"{user_label}: {clean(u, f'history[{i}] user turn')}")
        lines.append(f"{assistant_label}: {clean(a, f'history[{i}] assistant turn')}")
    lines.append(f"{user_label}: {clean(user, 'user turn')}")
    lines.append(f"{assistant_label}:")
    return "\n".join(lines)


def principle_revision_prompt(instruction: str, response: str, principle: str) -> str:
    """Stage 6 revision framing (completion mode): a draft answer rewritten to follow one principle.

    Exact format (``⏎`` is ``\n``)::

        A draft answer is rewritten so that it follows this principle: {principle}⏎
        ⏎
        Request: {instruction}⏎
        Draft answer: {response}⏎
        Rewritten answer:

    No trailing space (the model writes it). The rewrite ends at the first blank line: use
    ``"\n\n"`` as the stop string. All three texts are stripped; an empty one raises ``ValueError``.
    """
    p = _clean_instruction(principle, "principle")
    return (f"A draft answer is rewritten so that it follows this principle: {p}\n\n"
            f"Request: {_clean_instruction(instruction)}\n"
            f"Draft answer: {_clean_instruction(response, 'response')}\n"
            "Rewritten answer:")


# Name -> builder. Stage configs refer to builders by these names only.
BUILDERS: dict[str, Callable[..., str]] = {
    "instruction_response": response_prompt,
    "numbered_list": instruction_generation_prompt,
    "raw": raw_prompt,
    "urial": urial_prompt,
    "critique": critique_prompt,
    "revision": revision_prompt,
}


# Builders by role, i.e. by call signature; a stage key may name only builders of its role
# (`phases.stage_config` checks it), so a config can never pick one that crashes when called.
RESPONSE_BUILDERS: tuple[str, ...] = ("instruction_response",)     # (instruction, fewshot, end_marker)
INSTRUCTION_BUILDERS: tuple[str, ...] = ("numbered_list",)         # (examples, start_index, family, header)
FRAMING_BUILDERS: tuple[str, ...] = ("instruction_response", "raw", "urial")  # (instruction) -> prompt

# Older spellings of a builder's name -> its one registered name. `phases.evaluate` calls the
# ``Instruction: ...\nResponse:`` arm "instruction"; it is the same builder, with one identity
# (and one content version in `phases.pieces`).
BUILDER_ALIASES: dict[str, str] = {"instruction": "instruction_response"}


def canonical_builder_name(name: str) -> str:
    """The registered name of builder ``name`` (aliases resolved); unknown names raise ``KeyError``."""
    canonical = BUILDER_ALIASES.get(name, name)
    if canonical not in BUILDERS:
        raise KeyError(f"unknown prompt builder {name!r}; known builders: {sorted(BUILDERS)}")
    return canonical


def get_builder(name: str) -> Callable[..., str]:
    """The builder registered under ``name`` (or an alias of it); unknown names raise ``KeyError``
    listing the known ones."""
    return BUILDERS[canonical_builder_name(name)]
