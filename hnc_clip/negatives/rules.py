"""Rule-based hard negatives from a plain caption, made on the fly in the DataLoader workers.

The rules follow the field's: NegCLIP's swaps of same-type words (vinid/neg_clip, spaCy tags on COCO), SVLC's
class-list replacements (colour, size, material, ...), SugarCrepe's type names (replace-att/obj/rel,
swap-att/obj), ARO's relation swap and order shuffles, which CLoVe and FSC-CLIP draw per batch.

    swap-obj      two nouns trade places           "a dog chasing a cat"        -> "a cat chasing a dog"
    swap-att      two adjectives of two nouns      "a red cup and a blue plate" -> "a blue cup and a red plate"
    swap-rel      a relation's subject and object  "the cup left of the plate"  -> "the plate left of the cup"
    replace-att   an attribute -> one of its class "a red cup"                  -> "a green cup"
    replace-obj   an object -> one of its class    "a dog on the grass"         -> "a horse on the grass"
    replace-rel   a relation -> another / antonym  "a cup on a table"           -> "a cup under a table"
    shuffle-*     ARO's word-order perturbations (all words, nouns+adjectives, all but them, trigrams, within trigrams)

Every rule reads coarse POS tags and the vocabulary (`vocabulary.json`); none needs a dependency parse. Where the
parser has one (a spaCy pipeline with a parser), noun phrases come from its noun chunks, and swap-rel / swap-att
take a relation's subject and object, and a predicative adjective's noun, from the dependency arcs; without it they
take the noun phrases next to the relation / the adjective (see `docs/models_and_data.md`).

`CaptionNegatives` draws the negatives of one caption from a `random.Random` seeded by a stable hash of
(seed, key, caption), so a resumed run and any worker process make the same negatives for the same sample. Each
negative's rule group is drawn first (uniform among the groups with an applicable rule), then a rule in that group.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .parsers import CaptionParser, ParsedCaption, ParserUnavailableError, Token, load_parser
from .vocabulary import Entry, Vocabulary, load_vocabulary, pluralize

FLAG = "--negatives_from_captions"
DEFAULT_MAX_CHARS = 1000
ANTONYM_RATE = 0.5  # share of replace-att / replace-rel draws that take an antonym when the phrase has one
MAX_ITEMS = 24  # words considered per swap rule: bounds the pairs at 276 per caption
SHUFFLE_TRIES = 8

# Skip reasons. The first group: the caption could not be read; the last: read, but no rule applied to it.
UNPARSABLE_REASONS = (
    "not_text",
    "too_long",
    "control_chars",
    "invalid_unicode",
    "empty",
    "no_words",
    "parser_error",
)
NO_RULE_APPLIED = "no_rule_applied"
SKIP_REASONS = (*UNPARSABLE_REASONS, NO_RULE_APPLIED)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NON_WORD = re.compile(r"[^\w\s]")

NOUNS = frozenset(("NOUN", "PROPN"))
NP_MODIFIERS = frozenset(("NUM", "ADJ", "ADV"))
POSSESSIVES = frozenset(("my", "your", "his", "her", "its", "our", "their"))
# words allowed between a subject and its relation or predicative adjective ("a cat that is sitting on ...")
LINK_POS = frozenset(("AUX", "VERB", "ADV", "PART"))
LINK_WORDS = frozenset(("that", "which", "who"))
SUBJECT_DEPS = frozenset(("nsubj", "nsubjpass", "csubj"))
NOT_RELATION_POS = frozenset(("NOUN", "PROPN", "VERB", "PRON", "DET", "NUM"))
ATTRIBUTE_POS = frozenset(("ADJ", "X"))
OBJECT_POS = frozenset(("NOUN", "PROPN", "X"))
WORD_POS_EXCLUDED = frozenset(("PUNCT", "SYM", "SPACE"))


def normalize(text: str) -> str:
    """What must differ between a caption and its negative: case, punctuation and whitespace left out."""
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def stable_seed(seed: int, key: str, caption: str) -> int:
    """A 64-bit seed from (seed, key, caption) that is the same in every process and run (no salted `hash`)."""
    data = "\x1f".join((str(seed), str(key), caption)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# ----------------------------------------------------------------------------------------------- caption analysis


@dataclass(frozen=True, slots=True)
class NounPhrase:
    start: int  # first token (determiner included)
    end: int  # one past the head
    head: int  # the last noun
    noun_start: int  # first token of the noun run ending at the head ("coffee table")


@dataclass(frozen=True, slots=True)
class Match:
    start: int
    end: int
    entries: tuple[Entry, ...]


class Caption:
    """One parsed caption and what the rules read from it, each computed once on first use."""

    def __init__(self, parsed: ParsedCaption, vocabulary: Vocabulary):
        self.parsed, self.vocabulary = parsed, vocabulary
        self.tokens: tuple[Token, ...] = parsed.tokens
        self.lower = [t.text.lower() for t in self.tokens]

    def is_word(self, i: int) -> bool:
        return self.tokens[i].pos not in WORD_POS_EXCLUDED and any(c.isalnum() for c in self.tokens[i].text)

    def is_determiner(self, i: int) -> bool:
        t = self.tokens[i]
        return t.pos == "DET" or (t.pos == "PRON" and (t.tag == "PRP$" or self.lower[i] in POSSESSIVES))

    def matches(self, kind: str) -> list[Match]:
        """Non-overlapping vocabulary phrases of `kind`, longest first, left to right."""
        found = self._matches.get(kind)
        if found is None:
            found = self._matches[kind] = self._find(kind)
        return found

    @cached_property
    def _matches(self) -> dict[str, list[Match]]:
        return {}

    def _find(self, kind: str) -> list[Match]:
        index, first = self.vocabulary.index[kind], self.vocabulary.first_words[kind]
        longest, found, i, n = self.vocabulary.max_pieces[kind], [], 0, len(self.tokens)
        while i < n:
            if self.lower[i] in first:
                for j in range(min(n, i + longest), i, -1):
                    phrase = "".join(self.lower[t] + (self.tokens[t].ws if t < j - 1 else "") for t in range(i, j))
                    entries = index.get(" ".join(phrase.split()))
                    if entries:
                        found.append(Match(i, j, entries))
                        i = j
                        break
                else:
                    i += 1
            else:
                i += 1
        return found

    @cached_property
    def relation_tokens(self) -> frozenset[int]:
        """Tokens of relation phrases ("left of"): never part of a noun phrase, whatever a tagger called them."""
        return frozenset(t for m in self._relation_phrases for t in range(m.start, m.end))

    @cached_property
    def _relation_phrases(self) -> list[Match]:
        return [m for m in self.matches("relations") if self.tokens[m.start].pos not in NOT_RELATION_POS]

    @cached_property
    def noun_phrases(self) -> list[NounPhrase]:
        """The parser's noun chunks that end in a noun, else [det/possessive]* [NUM|ADJ|ADV]* [NOUN|PROPN]+ runs."""
        tokens, nps = self.tokens, []
        if self.parsed.noun_chunks is not None:
            for start, end in self.parsed.noun_chunks:
                head = max((i for i in range(start, end) if tokens[i].pos in NOUNS), default=None)
                if head is not None and not any(i in self.relation_tokens for i in range(start, head + 1)):
                    nps.append(NounPhrase(start, head + 1, head, self._noun_start(head, start)))
            return nps
        i, n = 0, len(tokens)
        while i < n:
            j = i
            while j < n and self.is_determiner(j):
                j += 1
            k = j
            while k < n and tokens[k].pos in NP_MODIFIERS and k not in self.relation_tokens:
                k += 1
            m = k
            while m < n and tokens[m].pos in NOUNS and m not in self.relation_tokens:
                m += 1
            if m > k:
                nps.append(NounPhrase(i, m, m - 1, k))
                i = m
            else:
                i = max(i + 1, j)
        return nps

    def _noun_start(self, head: int, start: int) -> int:
        i = head
        while i > start and self.tokens[i - 1].pos in NOUNS:
            i -= 1
        return i

    @cached_property
    def np_of_token(self) -> dict[int, NounPhrase]:
        return {i: np for np in self.noun_phrases for i in range(np.start, np.end)}

    @cached_property
    def np_starting(self) -> dict[int, NounPhrase]:
        return {np.start: np for np in self.noun_phrases}

    def np_before(self, i: int) -> NounPhrase | None:
        """The noun phrase that ends at token i, or before it with only link words between ("a cat is sitting")."""
        j = i
        while j > 0 and i - j < 3 and (self.tokens[j - 1].pos in LINK_POS or self.lower[j - 1] in LINK_WORDS):
            if j - 1 in self.np_of_token:
                break
            j -= 1
        np = self.np_of_token.get(j - 1)
        return np if np is not None and np.end == j else None

    def np_of_dependency(self, i: int) -> NounPhrase | None:
        """With a parse: the noun phrase of token i if it is a noun, else of its verb's subject."""
        if not self.parsed.has_dependencies or i < 0:
            return None
        t = self.tokens[i]
        if t.pos in NOUNS:
            return self.np_of_token.get(i)
        if t.pos in ("VERB", "AUX"):
            for c, child in enumerate(self.tokens):
                if child.head == i and c != i and child.dep in SUBJECT_DEPS:
                    return self.np_of_token.get(c)
        return None

    def number(self, i: int) -> str | None:
        """ "sg" / "pl" of noun token i from its tag, else from the vocabulary; None when unknown."""
        tag = self.tokens[i].tag
        if tag in ("NN", "NNP"):
            return "sg"
        if tag in ("NNS", "NNPS"):
            return "pl"
        entries = self.vocabulary.index["objects"].get(self.lower[i], ())
        numbers = {e.plural for e in entries if e.plural is not None}
        return ("pl" if numbers.pop() else "sg") if len(numbers) == 1 else None

    @cached_property
    def relations(self) -> list[tuple[Match, NounPhrase]]:
        """Relation phrases followed by a noun phrase (their object)."""
        out = []
        for m in self._relation_phrases:
            obj = self.np_starting.get(m.end)
            if obj is not None:
                out.append((m, obj))
        return out


# ------------------------------------------------------------------------------------------------------ rendering

Piece = list  # [text, trailing whitespace, index of the token it came from (-1: new), case model token or -1]


def pieces_of(c: Caption) -> list[Piece]:
    return [[t.text, t.ws, i, i] for i, t in enumerate(c.tokens)]


def swap_spans(pieces: list[Piece], a: tuple[int, int], b: tuple[int, int]) -> list[Piece]:
    """Spans a before b trade places; each position keeps its own trailing whitespace."""
    (s1, e1), (s2, e2) = a, b
    first, second = [list(p) for p in pieces[s1:e1]], [list(p) for p in pieces[s2:e2]]
    second[-1][1], first[-1][1] = pieces[e1 - 1][1], pieces[e2 - 1][1]
    return pieces[:s1] + second + pieces[e1:s2] + first + pieces[e2:]


def replace_span(pieces: list[Piece], start: int, end: int, phrase: str) -> list[Piece]:
    words = phrase.split(" ")
    new = [[w, " ", -1, start if k == 0 else -1] for k, w in enumerate(words)]
    new[-1][1] = pieces[end - 1][1]
    return pieces[:start] + new + pieces[end:]


def match_case(new: str, model: str) -> str:
    if len(model) > 1 and model.isupper():
        return new.upper()
    if model[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


_VOWEL_SOUND_EXCEPTIONS = ("hour", "honest", "honor", "honour", "heir")
_CONSONANT_SOUND_EXCEPTIONS = ("uni", "use", "usu", "uti", "eu", "one", "once", "ewe", "ufo")


def article_for(word: str) -> str:
    w = word.lower()
    if w.startswith(_VOWEL_SOUND_EXCEPTIONS):
        return "an"
    if w[:1] in "aeiou" and not w.startswith(_CONSONANT_SOUND_EXCEPTIONS):
        return "an"
    return "a"


def render(c: Caption, pieces: list[Piece], fix_articles: bool = True) -> str:
    """Pieces -> text: replaced words take the case of the word they replace, a word moved off the start loses its
    capital (not a proper noun or acronym), the first word gets the caption's, and "a"/"an" before a changed word
    follows it (not in shuffles, which keep the caption's words exactly, as ARO's do)."""
    tokens = c.tokens
    out = []
    for text, ws, origin, model in pieces:
        if origin < 0 and model >= 0:
            text = match_case(text, tokens[model].text)
        out.append([text, ws, origin])
    first = tokens[0]
    acronym = len(first.text) > 1 and first.text.isupper()
    lower_first = first.text[:1].isupper() and not acronym and first.pos != "PROPN" and first.text != "I"
    for k, piece in enumerate(out):
        if k > 0 and piece[2] == 0 and lower_first:
            piece[0] = piece[0][:1].lower() + piece[0][1:]
    for k in range(len(out) - 1 if fix_articles else 0):
        text, nxt = out[k][0], out[k + 1]
        changed = nxt[2] < 0 or nxt[2] != out[k][2] + 1
        if out[k][2] >= 0 and text.lower() in ("a", "an") and changed and nxt[0][:1].isalpha():
            out[k][0] = match_case(article_for(nxt[0]), text)
    if first.text[:1].isupper() and out[0][0][:1].islower():
        out[0][0] = out[0][0][:1].upper() + out[0][0][1:]
    return "".join(text + ws for text, ws, _ in out).strip()


# ----------------------------------------------------------------------------------------------------------- rules

RuleFn = Callable[[Caption, random.Random], Iterator[str]]


@dataclass(frozen=True)
class Rule:
    name: str
    group: str
    fn: RuleFn = field(repr=False)
    example: tuple[str, str]
    summary: str


def _pairs(items: list, rng: random.Random) -> list[tuple]:
    """All pairs of (at most MAX_ITEMS of) `items` in a seeded order, each pair in caption order."""
    items = list(items)
    if len(items) > MAX_ITEMS:
        items = sorted(rng.sample(items, MAX_ITEMS), key=items.index)
    pairs = list(itertools.combinations(items, 2))
    rng.shuffle(pairs)
    return pairs


def swap_objects(c: Caption, rng: random.Random) -> Iterator[str]:
    nps = c.noun_phrases
    for a, b in _pairs(nps, rng):
        head_a, head_b = c.lower[a.noun_start : a.end], c.lower[b.noun_start : b.end]
        if head_a == head_b:
            continue
        na, nb = c.number(a.head), c.number(b.head)
        if na and nb and na != nb:  # "a dog and two cats" -> "a cats and two dog"
            continue
        mods_a = [c.lower[i] for i in range(a.start, a.noun_start) if not c.is_determiner(i)]
        mods_b = [c.lower[i] for i in range(b.start, b.noun_start) if not c.is_determiner(i)]
        between = range(a.end, b.start)
        if mods_a == mods_b and all(c.tokens[i].pos in ("CCONJ", "PUNCT") for i in between):
            continue  # "a cup and a plate" -> "a plate and a cup" says the same
        yield render(c, swap_spans(pieces_of(c), (a.noun_start, a.end), (b.noun_start, b.end)))


def _attribute_owner(c: Caption, i: int) -> int | None:
    np = c.np_of_token.get(i)
    if np is not None and i < np.noun_start:
        return np.head
    t = c.tokens[i]
    if t.pos != "ADJ":
        return None
    dep_np = c.np_of_dependency(t.head) if t.dep in ("acomp", "attr", "amod", "conj") else None
    if dep_np is not None:
        return dep_np.head
    before = c.np_before(i)
    return before.head if before is not None else None


def swap_attributes(c: Caption, rng: random.Random) -> Iterator[str]:
    owners = [(i, _attribute_owner(c, i)) for i, t in enumerate(c.tokens) if t.pos == "ADJ"]
    adjectives = [(i, owner) for i, owner in owners if owner is not None]
    for (i, oi), (j, oj) in _pairs(adjectives, rng):
        if oi == oj or c.lower[i] == c.lower[j]:  # "a big red cup" -> "a red big cup" says the same
            continue
        yield render(c, swap_spans(pieces_of(c), (i, i + 1), (j, j + 1)))


def swap_relation(c: Caption, rng: random.Random) -> Iterator[str]:
    candidates = []
    for m, obj in c.relations:
        subj = None
        if c.parsed.has_dependencies:
            heads = [c.tokens[t].head for t in range(m.start, m.end)]
            outside = [h for h in heads if not m.start <= h < m.end]
            subj = c.np_of_dependency(outside[0]) if outside else None
            if subj is not None and subj.end > m.start:
                subj = None
        subj = subj or c.np_before(m.start)
        if subj is not None and c.lower[subj.start : subj.end] != c.lower[obj.start : obj.end]:
            candidates.append((subj, obj))
    rng.shuffle(candidates)
    for subj, obj in candidates:
        yield render(c, swap_spans(pieces_of(c), (subj.start, subj.end), (obj.start, obj.end)))


def _replacement(c: Caption, entry: Entry, rng: random.Random, antonyms: bool) -> str | None:
    opposite = c.vocabulary.antonyms_of(entry) if antonyms else []
    if opposite and rng.random() < ANTONYM_RATE:
        return rng.choice(opposite)
    others = c.vocabulary.other_groups(entry)
    return rng.choice(others)[0] if others else (rng.choice(opposite) if opposite else None)


def _replace_matches(c: Caption, rng: random.Random, matches: list[Match], antonyms: bool) -> Iterator[str]:
    """One seeded replacement per match first; then, for k > 1, the other replacements of each match."""
    candidates = [(m, e) for m in matches for e in m.entries]
    rng.shuffle(candidates)

    def written(m: Match, entry: Entry, new: str) -> str | None:
        if entry.kind == "objects":
            plural = entry.plural if entry.plural is not None else c.number(m.end - 1) == "pl"
            if plural:
                new = pluralize(new, c.vocabulary.plurals)
            elif new.endswith("s") and c.vocabulary.plurals.get(new) == new:
                return None  # "pants", "scissors" have no singular: "a red shirt" -/-> "a red pants"
        return render(c, replace_span(pieces_of(c), m.start, m.end, new))

    for m, entry in candidates:
        new = _replacement(c, entry, rng, antonyms)
        if new is not None and (negative := written(m, entry, new)) is not None:
            yield negative
    for m, entry in candidates:
        others = [g[0] for g in c.vocabulary.other_groups(entry)]
        others += c.vocabulary.antonyms_of(entry) if antonyms else []
        rng.shuffle(others)
        for new in others:
            if (negative := written(m, entry, new)) is not None:
                yield negative


def replace_attribute(c: Caption, rng: random.Random) -> Iterator[str]:
    def applies(m: Match) -> bool:
        last = m.end - 1
        if c.tokens[last].pos in ATTRIBUTE_POS:
            return True
        np = c.np_of_token.get(last)  # a noun as modifier: "a metal bench", "a glass table"
        return c.tokens[last].pos == "NOUN" and np is not None and last < np.head

    yield from _replace_matches(c, rng, [m for m in c.matches("attributes") if applies(m)], antonyms=True)


def replace_object(c: Caption, rng: random.Random) -> Iterator[str]:
    def applies(m: Match) -> bool:
        last = m.end - 1
        np = c.np_of_token.get(last)
        if c.tokens[last].pos == "X":
            return not (last + 1 < len(c.tokens) and c.tokens[last + 1].pos in NOUNS)
        return c.tokens[last].pos in OBJECT_POS and np is not None and np.head == last

    yield from _replace_matches(c, rng, [m for m in c.matches("objects") if applies(m)], antonyms=False)


def replace_relation(c: Caption, rng: random.Random) -> Iterator[str]:
    yield from _replace_matches(c, rng, [m for m, _ in c.relations], antonyms=True)


def _permuted(c: Caption, rng: random.Random, groups: list[list[int]]) -> Iterator[str]:
    """Each group of token positions permuted among themselves (positions keep their whitespace)."""
    groups = [g for g in groups if len({c.lower[i] for i in g}) > 1]
    if not groups:
        return
    for _ in range(SHUFFLE_TRIES):
        pieces = pieces_of(c)
        for group in groups:
            order = group[:]
            rng.shuffle(order)
            for dst, src in zip(group, order, strict=True):
                pieces[dst] = [c.tokens[src].text, c.tokens[dst].ws, src, src]
        yield render(c, pieces, fix_articles=False)


def _words(c: Caption) -> list[int]:
    return [i for i in range(len(c.tokens)) if c.is_word(i)]


def _trigrams(words: list[int]) -> list[list[int]]:
    return [words[i : i + 3] for i in range(0, len(words), 3)]


def shuffle_words(c: Caption, rng: random.Random) -> Iterator[str]:
    yield from _permuted(c, rng, [_words(c)])


def shuffle_nouns_adjectives(c: Caption, rng: random.Random) -> Iterator[str]:
    nouns = [i for i in _words(c) if c.tokens[i].pos == "NOUN"]
    adjectives = [i for i in _words(c) if c.tokens[i].pos == "ADJ"]
    yield from _permuted(c, rng, [nouns, adjectives])


def shuffle_allbut_nouns_adjectives(c: Caption, rng: random.Random) -> Iterator[str]:
    yield from _permuted(c, rng, [[i for i in _words(c) if c.tokens[i].pos not in ("NOUN", "ADJ")]])


def shuffle_trigrams(c: Caption, rng: random.Random) -> Iterator[str]:
    trigrams = _trigrams(_words(c))
    if len(trigrams) < 2:
        return
    # trigrams move as blocks into the word slots, so punctuation stays where it was
    slots = [i for t in trigrams for i in t]
    for _ in range(SHUFFLE_TRIES):
        order = trigrams[:]
        rng.shuffle(order)
        pieces = pieces_of(c)
        for dst, src in zip(slots, [i for t in order for i in t], strict=True):
            pieces[dst] = [c.tokens[src].text, c.tokens[dst].ws, src, src]
        yield render(c, pieces, fix_articles=False)


def shuffle_within_trigrams(c: Caption, rng: random.Random) -> Iterator[str]:
    trigrams = _trigrams(_words(c))
    for _ in range(SHUFFLE_TRIES):
        pieces = pieces_of(c)
        for group in trigrams:
            order = group[:]
            rng.shuffle(order)
            for dst, src in zip(group, order, strict=True):
                pieces[dst] = [c.tokens[src].text, c.tokens[dst].ws, src, src]
        yield render(c, pieces, fix_articles=False)


_RULES = (
    Rule("swap-obj", "swap", swap_objects, ("a dog chasing a cat", "a cat chasing a dog"), "two nouns trade places"),
    Rule(
        "swap-att",
        "swap",
        swap_attributes,
        ("a red cup and a blue plate", "a blue cup and a red plate"),
        "two adjectives of different nouns trade places",
    ),
    Rule(
        "swap-rel",
        "swap",
        swap_relation,
        ("the cup left of the plate", "the plate left of the cup"),
        "a relation's subject and object trade places",
    ),
    Rule(
        "replace-att",
        "replace",
        replace_attribute,
        ("a red cup", "a green cup"),
        "an attribute -> another of its class",
    ),
    Rule(
        "replace-obj",
        "replace",
        replace_object,
        ("a dog on the grass", "a horse on the grass"),
        "an object -> another of its class",
    ),
    Rule(
        "replace-rel",
        "replace",
        replace_relation,
        ("a cup on a table", "a cup under a table"),
        "a relation -> another (its antonym half of the time)",
    ),
    Rule(
        "shuffle-words",
        "shuffle",
        shuffle_words,
        ("a man riding a horse", "horse a riding man a"),
        "all words in a random order (punctuation stays)",
    ),
    Rule(
        "shuffle-nouns-adj",
        "shuffle",
        shuffle_nouns_adjectives,
        ("a white dog on a red sofa", "a red sofa on a white dog"),
        "nouns among nouns, adjectives among adjectives (ARO)",
    ),
    Rule(
        "shuffle-allbut-nouns-adj",
        "shuffle",
        shuffle_allbut_nouns_adjectives,
        ("a dog on a sofa", "on dog a a sofa"),
        "every word but nouns and adjectives (ARO)",
    ),
    Rule(
        "shuffle-trigrams",
        "shuffle",
        shuffle_trigrams,
        ("a man riding a brown horse", "a brown horse a man riding"),
        "word trigrams in a random order (ARO)",
    ),
    Rule(
        "shuffle-within-trigrams",
        "shuffle",
        shuffle_within_trigrams,
        ("a man riding a brown horse", "man riding a horse brown a"),
        "words within each trigram (ARO)",
    ),
)
RULES: dict[str, Rule] = {r.name: r for r in _RULES}
RULE_GROUPS: dict[str, tuple[str, ...]] = {
    **{g: tuple(r.name for r in _RULES if r.group == g) for g in dict.fromkeys(r.group for r in _RULES)},
    "all": tuple(RULES),
}


def parse_rules(value: str | Sequence[str]) -> tuple[str, ...]:
    """`--negatives_from_captions` value ("swap,replace-rel,shuffle") -> rule names in registry order."""
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen: set[str] = set()
    for raw in names:
        name = str(raw).strip().lower()
        if name in RULE_GROUPS:
            chosen.update(RULE_GROUPS[name])
        elif name in RULES:
            chosen.add(name)
        else:
            raise ValueError(
                f"{FLAG}: unknown rule {str(raw).strip()!r}; valid: groups {', '.join(RULE_GROUPS)}; "
                f"rules {', '.join(RULES)} (comma-separated)"
            )
    if not chosen:
        raise ValueError(f"{FLAG}: no rule named; valid: groups {', '.join(RULE_GROUPS)}; rules {', '.join(RULES)}")
    return tuple(name for name in RULES if name in chosen)


# ------------------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class NegativesResult:
    """Up to k (rule, negative caption) pairs; `reason` (one of SKIP_REASONS) says why there are none."""

    negatives: tuple[tuple[str, str], ...]
    reason: str | None = None

    @property
    def unparsable(self) -> bool:
        return self.reason in UNPARSABLE_REASONS


class CaptionNegatives:
    """Hard negatives of plain captions by rules; deterministic in (seed, key, caption) only.

    >>> from hnc_clip.negatives.parsers import LexiconParser
    >>> words = {"a": "DET", "red": "ADJ", "blue": "ADJ", "cup": "NOUN", "plate": "NOUN", "and": "CCONJ"}
    >>> gen = CaptionNegatives("swap-att", LexiconParser(words), seed=0)
    >>> gen("A red cup and a blue plate.", key="coco/42")
    [('swap-att', 'A blue cup and a red plate.')]
    >>> gen("", key="coco/43"), gen.last_reason
    ([], 'empty')

    Captions are whitespace-normalised (as CLIP's tokenizer does) and read only up to `max_chars` characters: a
    longer one is skipped ("too_long") rather than cut, because a negative of a cut caption would differ from the
    positive by the cut. `rule_counts` (negatives per rule) and `skip_counts` (captions per reason) are this
    process's counters (a pickled copy starts at zero); `generate` returns the reason with each caption for counting
    elsewhere.
    """

    def __init__(
        self,
        rules: str | Sequence[str],
        parser: CaptionParser | str,
        seed: int = 0,
        vocabulary: Vocabulary | str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        self.rules = parse_rules(rules)
        self.parser = load_parser(parser) if isinstance(parser, str) else parser
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        self.seed, self.max_chars = seed, max_chars
        self.rule_counts: Counter[str] = Counter()
        self.skip_counts: Counter[str] = Counter()
        self.last_reason: str | None = None

    def __getstate__(self):
        # a worker's copy counts from zero, so the per-process counters can be summed without counting twice
        state = dict(self.__dict__)
        state.update(rule_counts=Counter(), skip_counts=Counter(), last_reason=None)
        return state

    def __repr__(self) -> str:
        return f"CaptionNegatives(rules={','.join(self.rules)!r}, parser={self.parser!r}, seed={self.seed})"

    def check(self, caption) -> str | None:
        """The reason `caption` cannot be read, before parsing (cheap: length first); None when it can."""
        if not isinstance(caption, str):
            return "not_text"
        if len(caption) > self.max_chars:
            return "too_long"
        if _CONTROL.search(caption):
            return "control_chars"
        if _SURROGATE.search(caption):
            return "invalid_unicode"
        if not caption.strip():
            return "empty"
        if not any(ch.isalnum() for ch in caption):
            return "no_words"
        return None

    def _parse(self, text: str) -> ParsedCaption | None:
        try:
            parsed = self.parser.parse(text)
        except ParserUnavailableError:
            raise
        except Exception:  # a parser failing on one caption skips that caption, counted as parser_error
            return None
        return parsed if _valid(parsed, text) else None

    def generate(self, caption, key, k: int = 1) -> NegativesResult:
        """Up to k negatives of `caption` for sample `key` (any value; compared by `str(key)`)."""
        _check_k(k)
        reason = self.check(caption)
        if reason is None:
            text = " ".join(caption.split())
            parsed = self._parse(text)
            return self._finish(caption, key, k, parsed)
        return self._record(NegativesResult((), reason))

    def __call__(self, caption, key, k: int = 1) -> list[tuple[str, str]]:
        return list(self.generate(caption, key, k).negatives)

    def generate_batch(self, captions: Sequence, keys: Sequence, k: int = 1) -> list[NegativesResult]:
        """`generate` over a batch with one `parser.parse_batch` call (spaCy's `nlp.pipe`); same results."""
        _check_k(k)
        if len(captions) != len(keys):
            raise ValueError(f"{len(captions)} captions but {len(keys)} keys")
        reasons = [self.check(c) for c in captions]
        todo = [i for i, r in enumerate(reasons) if r is None]
        texts = [" ".join(captions[i].split()) for i in todo]
        try:
            parsed = self.parser.parse_batch(texts)
            parsed = [p if _valid(p, t) else None for p, t in zip(parsed, texts, strict=True)]
        except ParserUnavailableError:
            raise
        except Exception:  # one caption broke the batch: parse one by one so only that one is skipped
            parsed = [self._parse(t) for t in texts]
        by_index = dict(zip(todo, parsed, strict=True))
        return [
            self._finish(c, key, k, by_index[i])
            if reasons[i] is None
            else self._record(NegativesResult((), reasons[i]))
            for i, (c, key) in enumerate(zip(captions, keys, strict=True))
        ]

    def _finish(self, caption: str, key, k: int, parsed: ParsedCaption | None) -> NegativesResult:
        if parsed is None:
            return self._record(NegativesResult((), "parser_error"))
        if k == 0:
            return self._record(NegativesResult((), None))
        rng = random.Random(stable_seed(self.seed, key, caption))
        negatives = self._draw(Caption(parsed, self.vocabulary), caption, rng, k)
        return self._record(NegativesResult(tuple(negatives), None if negatives else NO_RULE_APPLIED))

    def _draw(self, c: Caption, caption: str, rng: random.Random, k: int) -> list[tuple[str, str]]:
        """Round by round until k: each group in a seeded order gives one negative from its next rule that has one.

        So each negative's group is uniform among the groups with an applicable rule and its rule uniform among
        that group's applicable rules (`all` gives a third swaps, not five elevenths shuffles); a rule that yields
        nothing new is dropped.
        """
        groups = list(dict.fromkeys(RULES[name].group for name in self.rules))
        rng.shuffle(groups)
        live = []
        for group in groups:
            names = [name for name in self.rules if RULES[name].group == group]
            rng.shuffle(names)
            live.append(deque((name, RULES[name].fn(c, rng)) for name in names))
        seen, out = {normalize(caption)}, []
        while live and len(out) < k:
            for rules in live:
                while rules and len(out) < k:
                    name, it = rules.popleft()
                    negative = next((n for n in it if (norm := normalize(n)) and norm not in seen), None)
                    if negative is not None:
                        seen.add(normalize(negative))
                        out.append((name, negative))
                        rules.append((name, it))  # its next negative comes after the group's other rules
                        break
            live = [rules for rules in live if rules]
        return out

    def _record(self, result: NegativesResult) -> NegativesResult:
        self.last_reason = result.reason
        if result.reason is not None:
            self.skip_counts[result.reason] += 1
        for name, _ in result.negatives:
            self.rule_counts[name] += 1
        return result


def _valid(parsed, text: str) -> bool:
    """The parser gave tokens that rebuild the caption (a broken backend is a skip, not a wrong negative)."""
    if not isinstance(parsed, ParsedCaption) or not parsed.tokens:
        return False
    return "".join(t.text + t.ws for t in parsed.tokens).strip() == text


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
