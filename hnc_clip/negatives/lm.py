"""Hard-negative captions written by a causal language model, precomputed once into a table (`hnc-clip-negatives`).

Each caption gets one prompt per SugarCrepe type (Hsieh et al. 2023: replace-att/obj/rel, swap-att/obj,
add-att/obj), few-shot: an instruction, three worked examples, then the caption and `Negative:`. The first line of
the continuation is the negative.

    Replace one object in the caption with a different object that could be in the scene; change nothing else.

    Caption: A man riding a horse on the beach.
    Negative: A man riding a camel on the beach.
    ...
    Caption: <the caption>
    Negative:

`LMGenerator` runs any `transformers` causal LM on a batch of prompts (left padding, `model.generate`, stopped at a
line end, greedy or seeded sampling). `write_negatives` turns the continuations of a batch of captions into kept
negatives through the filters (`FILTERS`), in order; every candidate dropped is counted under its reason:

    empty             the continuation's first line is empty (the LM wrote nothing, or a line end first)
    truncated         no line end or EOS within --max_new_tokens: the line may be cut mid-sentence
    same_as_positive  `differs`: equal to the caption up to case, punctuation and whitespace
    too_long          `length`: more than --max_words words, or --max_length_ratio times the caption's
    duplicate         `dedupe`: equal (normalised) to a negative the row kept already
    implausible       `plausibility`: a text-only LM finds it less likely than the caption by more than
                      --plausibility_margin nats per token

The last is SugarCrepe's lesson: ARO's and CREPE's negatives were often ungrammatical or nonsensical, so a blind
text model (no image) could tell them from the positive; SugarCrepe filtered those out. Here a negative whose mean
per-token log-likelihood lies far below its caption's is one such giveaway; `blind_accuracy` says how often the
scoring LM still prefers the caption among the negatives kept (0.5: chance).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .rules import normalize

TYPES = ("replace-att", "replace-obj", "replace-rel", "swap-att", "swap-obj", "add-att", "add-obj")
PARSE_REASONS = ("empty", "truncated")
_QUOTES = "\"'`“”‘’"


# -- prompts ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A few-shot prompt: the instruction, worked (caption, negative) examples, then the caption to change."""

    instruction: str
    examples: tuple[tuple[str, str], ...]

    def format(self, caption: str) -> str:
        shots = "".join(f"Caption: {c}\nNegative: {n}\n\n" for c, n in self.examples)
        return f"{self.instruction}\n\n{shots}Caption: {caption}\nNegative:"


PROMPTS: dict[str, Prompt] = {
    "replace-obj": Prompt(
        "Replace one object in the caption with a different object that could be in the scene; change nothing else.",
        (("A man riding a horse on the beach.", "A man riding a camel on the beach."),
         ("Two cups on a wooden table.", "Two plates on a wooden table."),
         ("A cat sleeping on a laptop.", "A cat sleeping on a book.")),
    ),
    "replace-att": Prompt(
        "Replace one attribute (a colour, size, material, shape or state) in the caption with a different one; "
        "change nothing else.",
        (("A red car parked by a white fence.", "A blue car parked by a white fence."),
         ("A small dog on a leather sofa.", "A small dog on a fabric sofa."),
         ("An empty glass next to a plate.", "A full glass next to a plate.")),
    ),
    "replace-rel": Prompt(
        "Replace the relation or the action between the objects in the caption with a different one; change "
        "nothing else.",
        (("A cat sitting on a box.", "A cat sitting in a box."),
         ("A man holding an umbrella.", "A man throwing an umbrella."),
         ("A lamp next to the bed.", "A lamp above the bed.")),
    ),
    "swap-att": Prompt(
        "Swap the attributes of two objects in the caption; keep every other word.",
        (("A red cup and a blue plate.", "A blue cup and a red plate."),
         ("A tall man next to a short woman.", "A short man next to a tall woman."),
         ("A wooden chair beside a metal table.", "A metal chair beside a wooden table.")),
    ),
    "swap-obj": Prompt(
        "Swap two objects in the caption; keep every other word.",
        (("A dog chasing a cat.", "A cat chasing a dog."),
         ("A plate on top of a book.", "A book on top of a plate."),
         ("A woman feeding a horse in a field.", "A horse feeding a woman in a field.")),
    ),
    "add-att": Prompt(
        "Add one attribute to one object in the caption; change nothing else.",
        (("A dog on the grass.", "A black dog on the grass."),
         ("A man holding a cup.", "A man holding a broken cup."),
         ("Two chairs by a window.", "Two chairs by an open window.")),
    ),
    "add-obj": Prompt(
        "Add one object to the caption; change nothing else.",
        (("A dog on the grass.", "A dog and a ball on the grass."),
         ("A man riding a bicycle.", "A man riding a bicycle with a basket."),
         ("A bowl of soup on a table.", "A bowl of soup and a spoon on a table.")),
    ),
}  # fmt: skip


def load_prompts(path: str | None) -> dict[str, Prompt]:
    """`PROMPTS`, with the types of a JSON file `{type: {"instruction": ..., "examples": [[caption, negative],
    ...]}}` added or replaced (`--prompts_file`)."""
    prompts = dict(PROMPTS)
    if path is None:
        return prompts
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--prompts_file {path}: cannot read it as JSON: {err}") from err
    if not isinstance(spec, dict):
        raise ValueError(f"--prompts_file {path}: expected an object of type -> prompt")
    for name, entry in spec.items():
        where = f"--prompts_file {path}: {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("instruction"), str):
            raise ValueError(f"{where}: expected {{'instruction': str, 'examples': [[caption, negative], ...]}}")
        examples = entry.get("examples", [])
        if not isinstance(examples, list) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(t, str) for t in e) for e in examples
        ):
            raise ValueError(f"{where}: 'examples' must be a list of [caption, negative] string pairs")
        prompts[name] = Prompt(entry["instruction"], tuple(tuple(e) for e in examples))
    return prompts


# -- generation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """A continuation, decoded; `ended`: an EOS or a line end came before --max_new_tokens ran out."""

    text: str
    ended: bool = True


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_return_sequences: int = 1
    chat_template: bool = False  # wrap each prompt as a user turn (instruction-tuned models)


class LMGenerator:
    """Batched generation with a causal LM: `generator(prompts, seed)` → per prompt, its
    `num_return_sequences` continuations. Prompts are left-padded (a decoder-only model continues the last
    position); sampling draws from `torch.manual_seed(seed)`, so the same batch and seed give the same text."""

    def __init__(self, model, tokenizer, settings: GenerationSettings):
        from transformers import GenerationConfig

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad nor an EOS token: batched generation needs one")
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        sampling = dict(temperature=settings.temperature, top_p=settings.top_p) if settings.do_sample else {}
        # A fresh config, not the checkpoint's: its sampling defaults (Qwen's temperature 0.7, repetition penalty)
        # would silently override what the flags say.
        self.config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            num_return_sequences=settings.num_return_sequences, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None, stop_strings=["\n"], **sampling,
        )  # fmt: skip

    def prompt_text(self, prompt: str) -> str:
        if not self.settings.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seed: int | None = None) -> list[list[Generation]]:
        # a chat template writes the special tokens (BOS) itself
        enc = self.tokenizer([self.prompt_text(p) for p in prompts], return_tensors="pt", padding=True,
                             add_special_tokens=not self.settings.chat_template)  # fmt: skip
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        if self.settings.do_sample and seed is not None:
            torch.manual_seed(seed)
        out = self.model.generate(**enc, generation_config=self.config, tokenizer=self.tokenizer)
        new = out[:, enc["input_ids"].shape[1] :].cpu()  # [B * num_return_sequences, <= max_new_tokens]
        k = self.settings.num_return_sequences
        gens = []
        for ids in new.tolist():
            ids = [t for t in ids if t != self.tokenizer.pad_token_id or t in self.eos_ids]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            ended = any(t in self.eos_ids for t in ids) or "\n" in text
            gens.append(Generation(text, ended))
        return [gens[i * k : (i + 1) * k] for i in range(len(prompts))]


def parse_generation(gen: Generation, allow_truncated: bool = False) -> tuple[str | None, str | None]:
    """(negative, None) or (None, reason): the continuation's first line (generation stops at the first line end,
    so a leading one is an empty answer), without quotes around it."""
    line, sep, _ = gen.text.partition("\n")
    line = line.strip()
    if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
        line = line[1:-1].strip()
    if not line:
        return None, "empty"
    if not sep and not gen.ended and not allow_truncated:
        return None, "truncated"
    return line, None


# -- filters ------------------------------------------------------------------------------------------------------

# Candidates of a batch: per caption, its (type, text) pairs still in the running.
Candidates = list[list[tuple[str, str]]]


@dataclass
class FilterOptions:
    max_words: int = 40
    max_length_ratio: float = 2.0  # of the caption's words; 0: no relative bound
    scorer: Callable[[Sequence[str]], list[float]] | None = None
    plausibility_margin: float = 1.0


class DiffersFilter:
    """A negative must say something else than its caption (up to case, punctuation and whitespace)."""

    reason = "same_as_positive"

    def __call__(self, positives: Sequence[str], candidates: Candidates) -> list[list[bool]]:
        return [[normalize(t) != normalize(p) for _, t in cs] for p, cs in zip(positives, candidates, strict=True)]


@dataclass
class LengthFilter:
    """An LM that rambles on is not writing a minimal edit of the caption."""

    max_words: int
    max_length_ratio: float
    reason = "too_long"

    def keep(self, positive: str, text: str) -> bool:
        n = len(text.split())
        ratio_ok = self.max_length_ratio <= 0 or n <= self.max_length_ratio * max(1, len(positive.split()))
        return n <= self.max_words and ratio_ok

    def __call__(self, positives: Sequence[str], candidates: Candidates) -> list[list[bool]]:
        return [[self.keep(p, t) for _, t in cs] for p, cs in zip(positives, candidates, strict=True)]


class DedupeFilter:
    """One negative per text in a row (two types often write the same edit)."""

    reason = "duplicate"

    def __call__(self, positives: Sequence[str], candidates: Candidates) -> list[list[bool]]:
        out = []
        for cs in candidates:
            seen: set[str] = set()
            row = []
            for _, t in cs:
                key = normalize(t)
                row.append(key not in seen)
                seen.add(key)
            out.append(row)
        return out


@dataclass
class PlausibilityFilter:
    """Keep a negative whose mean per-token log-likelihood under a text-only LM is at least its caption's minus
    `margin` (nats): one far less likely is one a blind model tells from the positive (SugarCrepe)."""

    scorer: Callable[[Sequence[str]], list[float]]
    margin: float
    reason = "implausible"
    # the last call's scores, per caption: (its own, {candidate: score}); `write_negatives` keeps the kept ones'
    scores: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def __call__(self, positives: Sequence[str], candidates: Candidates) -> list[list[bool]]:
        texts = list(positives) + [t for cs in candidates for _, t in cs]
        scores = self.scorer(texts)
        pos, rest = scores[: len(positives)], iter(scores[len(positives) :])
        self.scores = [(pos[i], {t: next(rest) for _, t in cs}) for i, cs in enumerate(candidates)]
        return [[own[t] >= p - self.margin for _, t in cs]
                for (p, own), cs in zip(self.scores, candidates, strict=True)]  # fmt: skip


def _needs_scorer(opts: FilterOptions) -> PlausibilityFilter:
    if opts.scorer is None:
        raise ValueError("--filters plausibility needs a scoring LM (--plausibility_model, or the generating one)")
    return PlausibilityFilter(opts.scorer, opts.plausibility_margin)


# name -> factory; applied in the order --filters gives (the costly `plausibility` best last).
FILTERS: dict[str, Callable[[FilterOptions], Callable]] = {
    "differs": lambda opts: DiffersFilter(),
    "length": lambda opts: LengthFilter(opts.max_words, opts.max_length_ratio),
    "dedupe": lambda opts: DedupeFilter(),
    "plausibility": _needs_scorer,
}
FILTER_REASONS = {"differs": "same_as_positive", "length": "too_long", "dedupe": "duplicate",
                  "plausibility": "implausible"}  # fmt: skip
DROP_REASONS = (*PARSE_REASONS, *FILTER_REASONS.values())


def build_filters(names: Sequence[str], opts: FilterOptions) -> list:
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"--filters: unknown {unknown}; available: {sorted(FILTERS)}")
    return [FILTERS[n](opts) for n in names]


# -- scoring ------------------------------------------------------------------------------------------------------


class LogLikelihoodScorer:
    """Mean per-token log-likelihood of each text under a causal LM, each text scored after a BOS (or EOS)
    token, so its first token is scored too: (1/n) Σ_t log p(x_t | BOS, x_<t)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("--plausibility_model: its tokenizer has no BOS or EOS token to start a text with")
        self.start = start
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            ids = [[self.start, *self.tokenizer(t, add_special_tokens=False)["input_ids"]]
                   for t in texts[i : i + self.batch_size]]  # fmt: skip
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [self.pad] * (width - len(x)) for x in ids])  # [B, L], right-padded
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])  # [B, L]
            device = self.model.device
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, L-1, V]: predicts positions 1..L-1
            target = input_ids[:, 1:].to(device)  # [B, L-1]
            token_ll = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, L-1]
            m = mask[:, 1:].to(device).float()  # [B, L-1]
            n = m.sum(-1)  # [B]
            mean = (token_ll * m).sum(-1) / n.clamp(min=1)  # [B]
            scores += [float(s) if c > 0 else -math.inf for s, c in zip(mean.tolist(), n.tolist(), strict=True)]
        return scores


# -- one batch of captions ----------------------------------------------------------------------------------------


@dataclass
class RowNegatives:
    """What one caption got: its kept negatives with their types, and its dropped candidates per type and reason."""

    negatives: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> reason -> count
    # with `plausibility`: the caption's and each kept negative's mean per-token log-likelihood
    positive_score: float | None = None
    scores: list[float] | None = None

    def drop(self, kind: str, reason: str) -> None:
        by_reason = self.dropped.setdefault(kind, {})
        by_reason[reason] = by_reason.get(reason, 0) + 1


def write_negatives(
    positives: Sequence[str],
    types: Sequence[str],
    prompts: dict[str, Prompt],
    generate: Callable[[Sequence[str], int | None], list[list[Generation]]],
    filters: Sequence,
    seed_of: Callable[[str], int | None] = lambda kind: None,
    allow_truncated: bool = False,
) -> list[RowNegatives]:
    """The negatives of a batch of captions: one `generate` call per type (prompts of one template pad little),
    each continuation parsed, then the filters in order, each seeing only what the earlier ones kept."""
    rows = [RowNegatives() for _ in positives]
    candidates: Candidates = [[] for _ in positives]
    for kind in types:
        outs = generate([prompts[kind].format(p) for p in positives], seed_of(kind))
        if len(outs) != len(positives):
            raise RuntimeError(f"generation returned {len(outs)} results for {len(positives)} prompts")
        for i, gens in enumerate(outs):
            for gen in gens:
                text, reason = parse_generation(gen, allow_truncated)
                if reason is None:
                    candidates[i].append((kind, text))
                else:
                    rows[i].drop(kind, reason)
    for filt in filters:
        verdicts = filt(positives, candidates)
        for i, (cs, keep) in enumerate(zip(candidates, verdicts, strict=True)):
            for (kind, _), ok in zip(cs, keep, strict=True):
                if not ok:
                    rows[i].drop(kind, filt.reason)
            candidates[i] = [c for c, ok in zip(cs, keep, strict=True) if ok]
    scored = next((f.scores for f in filters if isinstance(f, PlausibilityFilter)), None)
    for i, (row, cs) in enumerate(zip(rows, candidates, strict=True)):
        row.types = [kind for kind, _ in cs]
        row.negatives = [t for _, t in cs]
        if scored is not None:
            row.positive_score, own = scored[i]
            row.scores = [own[t] for t in row.negatives]
    return rows


def blind_accuracy(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Over (positive score, negative score) pairs: how often a blind text model that picks the likelier caption
    is right. SugarCrepe's target is chance (0.5): above it, the text alone gives the negative away."""
    return sum(p > n for p, n in pairs) / len(pairs) if pairs else None


def count_dropped(dropped: dict[str, dict[str, int]]) -> Counter:
    """reason -> count over the types."""
    total: Counter = Counter()
    for by_reason in dropped.values():
        total.update(by_reason)
    return total
