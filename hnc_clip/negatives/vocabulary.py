"""The class vocabularies the replace rules draw from: attributes (colour, size, material, ...), objects (COCO's
super-categories and a few more) and relations (spatial, with antonyms). The default ships as `vocabulary.json`
next to this module (its "about" entry states the format); `--negative_vocabulary FILE` extends or replaces it.

A class is a list of groups of synonyms; a replacement is drawn from *another* group of the same class, so a group
must never hold a word's hypernym ("person" beside "man" would make "a man" -> "a person", which is no negative).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

KINDS = ("attributes", "objects", "relations")
TOP_LEVEL_KEYS = frozenset((*KINDS, "antonyms", "plurals", "extend_default", "about"))
DEFAULT_VOCABULARY_FILE = os.path.join(os.path.dirname(__file__), "vocabulary.json")
MAX_PHRASE_CHARS = 64

# the pieces a tokenizer may split a phrase into (spaCy splits "t-shirt" into t / - / shirt): bounds a match's length
_PIECES = re.compile(r"\w+|[^\w\s]")


class VocabularyError(ValueError):
    """A vocabulary file is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One matchable form of a vocabulary phrase."""

    kind: str
    cls: str
    group: int
    phrase: str  # the form as listed (objects: singular)
    plural: bool | None  # objects: whether the matched form is the plural (None: same form, "sheep"); else None


def normalize_phrase(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def pluralize(phrase: str, irregular: Mapping[str, str]) -> str:
    """English plural of a noun phrase's last word (irregular forms from the vocabulary's "plurals")."""
    if phrase in irregular:
        return irregular[phrase]
    *head, last = phrase.split(" ")
    if last in irregular:
        last = irregular[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


class Vocabulary:
    """Validated class vocabularies with a phrase index; built from the JSON shape of `vocabulary.json`."""

    def __init__(self, data: Mapping, source: str = "<dict>"):
        self.source = source
        data = _validated(data, source)
        self.classes: dict[str, dict[str, list[tuple[str, ...]]]] = data["classes"]
        self.antonyms: dict[str, tuple[str, ...]] = data["antonyms"]
        self.plurals: dict[str, str] = data["plurals"]
        self.index: dict[str, dict[str, tuple[Entry, ...]]] = {}
        self.max_pieces: dict[str, int] = {}
        # words a phrase can start with, as a whitespace or a punctuation-splitting tokenizer cuts it ("t-shirt", "t")
        self.first_words: dict[str, frozenset[str]] = {}
        for kind in KINDS:
            index: dict[str, list[Entry]] = {}
            for cls, groups in self.classes[kind].items():
                for g, group in enumerate(groups):
                    for phrase in group:
                        if kind == "objects":
                            plural = pluralize(phrase, self.plurals)
                            if plural == phrase:
                                index.setdefault(phrase, []).append(Entry(kind, cls, g, phrase, None))
                            else:
                                index.setdefault(phrase, []).append(Entry(kind, cls, g, phrase, False))
                                index.setdefault(plural, []).append(Entry(kind, cls, g, phrase, True))
                        else:
                            index.setdefault(phrase, []).append(Entry(kind, cls, g, phrase, None))
            self.index[kind] = {p: tuple(e) for p, e in index.items()}
            self.max_pieces[kind] = max((len(_PIECES.findall(p)) for p in index), default=0)
            self.first_words[kind] = frozenset(w for p in index for w in (p.split(" ")[0], _PIECES.findall(p)[0]))

    def to_data(self) -> dict:
        return {
            **{kind: {c: [list(g) for g in gs] for c, gs in self.classes[kind].items()} for kind in KINDS},
            "antonyms": sorted({tuple(sorted((a, b))) for a, bs in self.antonyms.items() for b in bs}),
            "plurals": dict(self.plurals),
        }

    def __reduce__(self):
        return (Vocabulary, (self.to_data(), self.source))

    def group(self, entry: Entry) -> tuple[str, ...]:
        return self.classes[entry.kind][entry.cls][entry.group]

    def other_groups(self, entry: Entry) -> list[tuple[str, ...]]:
        return [g for i, g in enumerate(self.classes[entry.kind][entry.cls]) if i != entry.group]

    def antonyms_of(self, entry: Entry) -> list[str]:
        """Antonyms of the matched phrase, else of its group's first form, that are not its own synonyms."""
        group = set(self.group(entry))
        found = self.antonyms.get(entry.phrase) or self.antonyms.get(self.group(entry)[0], ())
        return [a for a in found if a not in group]


def _fail(source: str, where: str, what: str):
    raise VocabularyError(f"{source}: {where}: {what}")


def _phrase(value, source: str, where: str) -> str:
    if not isinstance(value, str):
        _fail(source, where, f"expected a phrase (string), got {type(value).__name__}")
    phrase = normalize_phrase(value)
    if not phrase or len(phrase) > MAX_PHRASE_CHARS or not any(c.isalnum() for c in phrase):
        _fail(source, where, f"{value!r} is not a phrase of 1 to {MAX_PHRASE_CHARS} characters with a letter")
    return phrase


def _groups(value, source: str, where: str) -> list[tuple[str, ...]]:
    if not isinstance(value, list):
        _fail(source, where, f"expected a list of groups (lists of synonyms), got {type(value).__name__}")
    groups, seen = [], {}
    for g, group in enumerate(value):
        group = [group] if isinstance(group, str) else group
        if not isinstance(group, list) or not group:
            _fail(source, f"{where}[{g}]", "expected a non-empty list of synonyms")
        phrases = tuple(dict.fromkeys(_phrase(p, source, f"{where}[{g}][{i}]") for i, p in enumerate(group)))
        for p in phrases:
            if p in seen:
                _fail(source, f"{where}[{g}]", f"{p!r} is already in group {seen[p]}; a phrase belongs to one group")
            seen[p] = g
        groups.append(phrases)
    return groups


def _validated(data, source: str) -> dict:
    if not isinstance(data, Mapping):
        _fail(source, "top level", f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        _fail(source, "top level", f"unknown keys {unknown}; valid: {sorted(TOP_LEVEL_KEYS)}")
    classes = {}
    for kind in KINDS:
        value = data.get(kind, {})
        if not isinstance(value, Mapping):
            _fail(source, kind, f"expected an object class -> groups, got {type(value).__name__}")
        classes[kind] = {}
        for cls, groups in value.items():
            if not isinstance(cls, str) or not cls:
                _fail(source, kind, f"class name {cls!r} is not a string")
            classes[kind][cls] = _groups(groups, source, f"{kind}.{cls}")
    antonyms: dict[str, tuple[str, ...]] = {}
    pairs = data.get("antonyms", [])
    if not isinstance(pairs, list):
        _fail(source, "antonyms", "expected a list of [phrase, phrase] pairs")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            _fail(source, f"antonyms[{i}]", "expected a [phrase, phrase] pair")
        a, b = (_phrase(p, source, f"antonyms[{i}]") for p in pair)
        if a == b:
            _fail(source, f"antonyms[{i}]", f"{a!r} cannot be its own antonym")
        antonyms[a] = (*antonyms.get(a, ()), b) if b not in antonyms.get(a, ()) else antonyms[a]
        antonyms[b] = (*antonyms.get(b, ()), a) if a not in antonyms.get(b, ()) else antonyms[b]
    plurals = data.get("plurals", {})
    if not isinstance(plurals, Mapping):
        _fail(source, "plurals", "expected an object singular -> plural")
    plurals = {_phrase(s, source, "plurals"): _phrase(p, source, f"plurals.{s}") for s, p in plurals.items()}
    extend = data.get("extend_default", True)
    if not isinstance(extend, bool):
        _fail(source, "extend_default", f"expected true or false, got {extend!r}")
    return {"classes": classes, "antonyms": antonyms, "plurals": plurals, "extend_default": extend}


def _merge_groups(base: list[tuple[str, ...]], extra: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """`extra`'s groups added to `base`; one sharing a phrase with base groups is merged with them (base order)."""
    groups = [list(g) for g in base]
    for new in extra:
        hits = [i for i, g in enumerate(groups) if set(g) & set(new)]
        if not hits:
            groups.append(list(new))
            continue
        merged = [p for i in hits for p in groups[i]] + list(new)
        groups[hits[0]] = list(dict.fromkeys(merged))
        for i in reversed(hits[1:]):
            del groups[i]
    return [tuple(g) for g in groups]


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    with open(DEFAULT_VOCABULARY_FILE, encoding="utf-8") as f:
        return Vocabulary(json.load(f), "hnc_clip/negatives/vocabulary.json")


def load_vocabulary(path: str | None = None) -> Vocabulary:
    """The default vocabulary, or the default extended by `path` (`"extend_default": false` in it: `path` alone).

    Errors name the flag and the file: `VocabularyError("--negative_vocabulary FILE: attributes.color[2]: ...")`.
    """
    if path is None:
        return default_vocabulary()
    source = f"--negative_vocabulary {path}"
    try:
        with open(path, encoding="utf-8") as f:
            user = json.load(f)
    except FileNotFoundError as err:
        raise VocabularyError(f"{source}: no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise VocabularyError(f"{source}: not a UTF-8 JSON object ({err})") from err
    checked = _validated(user, source)
    if not checked["extend_default"]:
        return Vocabulary(user, source)
    base = default_vocabulary().to_data()
    merged = {kind: dict(base[kind]) for kind in KINDS}
    for kind in KINDS:
        for cls, groups in checked["classes"][kind].items():
            merged[kind][cls] = [list(g) for g in _merge_groups(base[kind].get(cls, []), groups)]
    merged["antonyms"] = [list(p) for p in base["antonyms"]] + [
        [a, b] for a, bs in checked["antonyms"].items() for b in bs if a < b
    ]
    merged["plurals"] = {**base["plurals"], **checked["plurals"]}
    return Vocabulary(merged, source)
