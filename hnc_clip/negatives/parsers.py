"""Caption parsers the negative rules read: a caption -> tokens with their text, trailing whitespace and coarse
part of speech (Universal POS: NOUN, ADJ, ADP, VERB, NUM, DET, ...), plus, where the parser has them, a dependency
label and head per token and noun chunks.

    spacy:<name or folder>   any spaCy pipeline: an installed package (`en_core_web_sm`) or a folder written by
                             `nlp.to_disk`. Optional dependency (`pip install "hnc-clip[negatives]"`); spaCy is
                             imported only when such a parser is loaded.
    lexicon:<words.json>     no dependency: a JSON object word -> POS for a closed vocabulary (a synthetic world, a
                             lab's tag list); unknown words are "X", digits NUM, punctuation PUNCT.

Parsers run in DataLoader workers, possibly spawned: `load_parser` loads a spaCy pipeline once in the calling
process (so a missing model is a named error before training starts), and a pickled copy carries only the spec and
loads the pipeline again on first use in its process.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

UPOS = frozenset("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X SPACE".split())
NEUTRAL_POS = "X"

# Components no rule reads: left out so a full pipeline (en_core_web_sm) parses a caption faster.
SPACY_UNUSED_COMPONENTS = ("ner", "lemmatizer", "entity_linker", "entity_ruler", "textcat", "textcat_multilabel")


class ParserUnavailableError(RuntimeError):
    """The parser named by a spec cannot be loaded (spaCy or its pipeline not installed, a lexicon file unreadable)."""


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    ws: str  # trailing whitespace, so "".join(t.text + t.ws) rebuilds the caption
    pos: str  # Universal POS; "X" when the parser does not know
    tag: str = ""  # fine-grained tag (Penn: NN / NNS ...) where the parser gives one
    dep: str = ""  # dependency label where the parser gives a parse
    head: int = -1  # index of the head token; -1 without a parse


@dataclass(frozen=True, slots=True)
class ParsedCaption:
    text: str
    tokens: tuple[Token, ...]
    # [start, end) token spans of noun phrases from the parser; None when it has no dependency parse
    noun_chunks: tuple[tuple[int, int], ...] | None = None

    @property
    def has_dependencies(self) -> bool:
        return self.noun_chunks is not None


class CaptionParser(ABC):
    """caption -> ParsedCaption; `parse_batch` is the fast path where a backend batches (spaCy's `nlp.pipe`)."""

    spec: str

    @abstractmethod
    def parse(self, text: str) -> ParsedCaption: ...

    def parse_batch(self, texts: Sequence[str]) -> list[ParsedCaption]:
        return [self.parse(t) for t in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


# --------------------------------------------------------------------------------------------------------- spaCy


def _import_spacy():
    try:
        import spacy
    except ImportError as err:
        raise ParserUnavailableError(
            'the spaCy caption parser needs spaCy: pip install "hnc-clip[negatives]" '
            "(then a pipeline, e.g. python -m spacy download en_core_web_sm)"
        ) from err
    return spacy


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(".") or os.path.exists(name)


def load_spacy_pipeline(name: str):
    """`spacy.load(name)` without the components no rule reads; a missing spaCy or pipeline is a named error."""
    spacy = _import_spacy()
    if _looks_like_path(name) and not os.path.isfile(os.path.join(name, "config.cfg")):
        raise ParserUnavailableError(
            f"no spaCy pipeline at {name!r}: expected a folder written by nlp.to_disk (with config.cfg)"
        )
    try:
        return spacy.load(name, exclude=list(SPACY_UNUSED_COMPONENTS))
    except OSError as err:
        if "E050" in str(err):
            raise ParserUnavailableError(
                f"spaCy pipeline {name!r} is not installed: python -m spacy download {name} "
                f"(or pass a pipeline folder: spacy:/path/to/pipeline)"
            ) from err
        raise ParserUnavailableError(f"spaCy pipeline {name!r} could not be loaded: {err}") from err
    except Exception as err:  # spaCy raises ValueError/KeyError/ConfigValidationError for broken or foreign configs
        raise ParserUnavailableError(f"spaCy pipeline {name!r} could not be loaded: {err}") from err


def doc_to_parsed(doc) -> ParsedCaption:
    """A spaCy `Doc` -> ParsedCaption; dependencies only when every token has one (an attribute rule can set DEP on
    a few tokens without heads, which is no parse)."""
    has_deps = doc.has_annotation("DEP", require_complete=True)
    tokens = tuple(
        Token(
            t.text,
            t.whitespace_,
            t.pos_ if t.pos_ in UPOS else NEUTRAL_POS,
            t.tag_,
            t.dep_ if has_deps else "",
            t.head.i if has_deps else -1,
        )
        for t in doc
    )
    chunks = None
    if has_deps:
        try:
            chunks = tuple((c.start, c.end) for c in doc.noun_chunks)
        except (ValueError, NotImplementedError):  # a language without a noun-chunk iterator
            chunks = None
    return ParsedCaption(doc.text, tokens, chunks)


class SpacyParser(CaptionParser):
    """A spaCy pipeline by package name or folder; loaded on first use in each process, never pickled."""

    def __init__(self, name: str, batch_size: int = 256, lazy: bool = True):
        self.name, self.batch_size = name, batch_size
        self.spec = f"spacy:{name}"
        self._nlp = None
        if not lazy:
            self._load()

    def _load(self):
        if self._nlp is None:
            self._nlp = load_spacy_pipeline(self.name)
        return self._nlp

    def __getstate__(self):
        return {"name": self.name, "batch_size": self.batch_size}

    def __setstate__(self, state):
        self.__init__(state["name"], state["batch_size"], lazy=True)

    def parse(self, text: str) -> ParsedCaption:
        return doc_to_parsed(self._load()(text))

    def parse_batch(self, texts: Sequence[str]) -> list[ParsedCaption]:
        return [doc_to_parsed(d) for d in self._load().pipe(texts, batch_size=self.batch_size)]


# ------------------------------------------------------------------------------------------------------- lexicon

# words (hyphen/apostrophe compounds kept whole: "t-shirt", "man's"), or one non-space character
_LEXICON_TOKEN = re.compile(r"(\w+(?:[-'’]\w+)*|[^\w\s])(\s*)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class LexiconParser(CaptionParser):
    """Closed-vocabulary tagger: a JSON object (or dict) lowercase word -> Universal POS; no dependency parse."""

    def __init__(self, words: Mapping[str, str], source: str = "<dict>"):
        if not isinstance(words, Mapping):
            raise ValueError(f"{source}: a lexicon is a JSON object word -> POS, got {type(words).__name__}")
        lexicon = {}
        for word, pos in words.items():
            if not isinstance(word, str) or not word or any(c.isspace() for c in word):
                raise ValueError(f"{source}: lexicon key {word!r} is not one word")
            if pos not in UPOS:
                raise ValueError(f"{source}: {word!r} -> {pos!r} is not a POS; valid: {', '.join(sorted(UPOS))}")
            lexicon[word.lower()] = pos
        self.words = lexicon
        self.spec = f"lexicon:{source}"

    @classmethod
    def from_file(cls, path: str) -> LexiconParser:
        try:
            with open(path, encoding="utf-8") as f:
                words = json.load(f)
        except FileNotFoundError as err:
            raise ParserUnavailableError(f"lexicon file {path!r} does not exist") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ParserUnavailableError(f"lexicon file {path!r} is not a UTF-8 JSON object: {err}") from err
        return cls(words, path)

    def _pos(self, word: str) -> str:
        pos = self.words.get(word.lower())
        if pos is not None:
            return pos
        if _NUMBER.fullmatch(word):
            return "NUM"
        if not any(c.isalnum() for c in word):
            return "PUNCT"
        return NEUTRAL_POS

    def parse(self, text: str) -> ParsedCaption:
        start = len(text) - len(text.lstrip())
        tokens = [Token(m[1], m[2], self._pos(m[1])) for m in _LEXICON_TOKEN.finditer(text, start)]
        return ParsedCaption(text, tuple(tokens))


# ---------------------------------------------------------------------------------------------------------- specs

PARSER_KINDS = {
    "spacy": lambda arg: SpacyParser(arg, lazy=False),
    "lexicon": LexiconParser.from_file,
}
PARSER_SPEC_HELP = "spacy:<pipeline name or folder> (e.g. spacy:en_core_web_sm), lexicon:<words.json>"


def load_parser(spec: str) -> CaptionParser:
    """`"spacy:en_core_web_sm"`, `"spacy:/path/to/pipeline"`, `"lexicon:/path/words.json"` -> a loaded parser.

    A spaCy pipeline is loaded here, so a missing spaCy or pipeline fails now (`ParserUnavailableError` naming the
    install command), not in a DataLoader worker; pickled copies load it again lazily.
    """
    kind, sep, arg = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or kind not in PARSER_KINDS or not arg:
        raise ValueError(f"--caption_parser {spec!r}: expected {PARSER_SPEC_HELP}")
    return PARSER_KINDS[kind](arg)
