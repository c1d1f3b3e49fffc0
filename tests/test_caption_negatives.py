"""Rule-based negatives from plain captions (`hnc_clip.negatives`): each rule's output on captions where it applies
(expectations written by hand), determinism in (seed, key, caption) across generators, pickles and processes, the
seeded choice among rules, hostile captions, and the parsers' loading paths. The spaCy pipeline is built here
(`spacy.blank("en")` + an `attribute_ruler` setting POS/TAG), saved with `nlp.to_disk` and loaded back through
`load_parser("spacy:<folder>")`; nothing is downloaded."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter

import pytest

from hnc_clip.negatives.parsers import (
    CaptionParser,
    LexiconParser,
    ParsedCaption,
    ParserUnavailableError,
    SpacyParser,
    doc_to_parsed,
    load_parser,
)
from hnc_clip.negatives.rules import (
    FLAG,
    NO_RULE_APPLIED,
    RULE_GROUPS,
    RULES,
    UNPARSABLE_REASONS,
    CaptionNegatives,
    normalize,
    parse_rules,
)
from hnc_clip.negatives.vocabulary import Vocabulary, VocabularyError, default_vocabulary, load_vocabulary

from .helpers import REPO

WORDS = {
    "a": "DET", "an": "DET", "the": "DET", "two": "NUM",
    "red": "ADJ", "blue": "ADJ", "green": "ADJ", "brown": "ADJ", "white": "ADJ", "big": "ADJ", "wooden": "ADJ",
    "cup": "NOUN", "cups": "NOUN", "plate": "NOUN", "dog": "NOUN", "cat": "NOUN", "cats": "NOUN", "table": "NOUN",
    "man": "NOUN", "shirt": "NOUN", "horse": "NOUN", "beach": "NOUN", "sofa": "NOUN", "apple": "NOUN",
    "circle": "NOUN", "square": "NOUN",
    "chasing": "VERB", "riding": "VERB", "is": "AUX", "are": "AUX",
    "on": "ADP", "of": "ADP", "near": "ADP", "above": "ADP", "left": "ADV", "and": "CCONJ",
}  # fmt: skip
PLURAL_NOUNS = {"cups", "cats"}


def spacy_pipeline(path):
    """A blank English pipeline whose attribute_ruler tags WORDS (Penn tags for nouns, so number is known)."""
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    for word, pos in WORDS.items():
        attrs = {"POS": pos}
        if pos == "NOUN":
            attrs["TAG"] = "NNS" if word in PLURAL_NOUNS else "NN"
        ruler.add([[{"LOWER": word}]], attrs)
    ruler.add([[{"IS_PUNCT": True}]], {"POS": "PUNCT"})
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def spacy_dir(tmp_path_factory):
    return spacy_pipeline(tmp_path_factory.mktemp("spacy_pipeline") / "pipeline")


@pytest.fixture(scope="module")
def lexicon_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lexicon") / "words.json"
    path.write_text(json.dumps(WORDS))
    return path


@pytest.fixture(scope="module", params=["lexicon", "spacy"])
def parser(request, lexicon_file, spacy_dir):
    """Each backend through its real loading path (a spec string)."""
    return load_parser(f"lexicon:{lexicon_file}" if request.param == "lexicon" else f"spacy:{spacy_dir}")


def small_vocabulary(tmp_path, data: dict) -> Vocabulary:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"extend_default": False, **data}))
    return load_vocabulary(str(path))


# ---------------------------------------------------------------------------------------------- each rule's output

# (rule, caption, the negative) - written by hand; the rule has exactly one change to make on each caption
SWAP_CASES = [
    ("swap-att", "a red cup left of a blue plate", "a blue cup left of a red plate"),
    ("swap-att", "A red cup and a blue plate.", "A blue cup and a red plate."),
    ("swap-att", "the cup is red and the plate is blue", "the cup is blue and the plate is red"),
    ("swap-obj", "a dog chasing a cat", "a cat chasing a dog"),
    ("swap-obj", "A red cup and a blue plate.", "A red plate and a blue cup."),
    ("swap-obj", "an apple on a table", "a table on an apple"),
    ("swap-rel", "the cup left of the plate", "the plate left of the cup"),
    ("swap-rel", "A red circle is left of a blue square.", "A blue square is left of a red circle."),
    ("swap-rel", "two cups on a table", "a table on two cups"),
]


@pytest.mark.parametrize("rule,caption,expected", SWAP_CASES)
def test_swap_rules(parser, rule, caption, expected):
    gen = CaptionNegatives(rule, parser, seed=0)
    assert gen(caption, key="k") == [(rule, expected)]


@pytest.mark.parametrize(
    "rule,caption",
    [
        ("swap-obj", "a cup and a plate"),  # coordination: the swap says the same
        ("swap-obj", "a dog and two cats"),  # numbers differ: "a cats and two dog"
        ("swap-att", "a big red cup"),  # both adjectives of one noun
        ("swap-rel", "a dog chasing a cat"),  # no relation phrase
        ("replace-rel", "the cup left of"),  # no object after the relation
        ("shuffle-words", "cup"),
    ],
)
def test_rule_does_not_apply(parser, rule, caption):
    gen = CaptionNegatives(rule, parser, seed=0)
    assert gen(caption, key="k") == []
    assert gen.last_reason == NO_RULE_APPLIED and gen.skip_counts == {NO_RULE_APPLIED: 1}


def test_replace_attribute_object_relation(parser, tmp_path):
    vocab = small_vocabulary(
        tmp_path,
        {
            "attributes": {"color": [["red"], ["green"]], "material": [["wooden"], ["metal"]]},
            "objects": {
                "kitchen": [["cup"], ["bowl"]],
                "fruit": [["apple"], ["pear"]],
                "clothing": [["shirt"], ["pants"], ["dress"]],
            },
            "plurals": {"pants": "pants"},
            "relations": {"spatial": [["on"], ["under"]]},
        },
    )
    expect = {
        ("replace-att", "A red cup."): "A green cup.",
        ("replace-att", "a wooden table"): "a metal table",
        ("replace-obj", "Two cups on a table."): "Two bowls on a table.",  # plural kept
        ("replace-obj", "an apple near a plate"): "a pear near a plate",  # article follows the new word
        ("replace-obj", "Apple on a plate"): "Pear on a plate",  # case of the replaced word
        ("replace-obj", "a red shirt"): "a red dress",  # never "a red pants": it has no singular
        ("replace-rel", "a cup on a table"): "a cup under a table",
    }
    for (rule, caption), negative in expect.items():
        assert CaptionNegatives(rule, parser, vocabulary=vocab)(caption, key="k") == [(rule, negative)], caption


def test_replace_relation_antonym_rate(parser, tmp_path):
    # antonym first half of the time, else any other group: right of = 1/2 + 1/2 * 1/2
    vocab = small_vocabulary(
        tmp_path,
        {"relations": {"spatial": [["left of"], ["right of"], ["above"]]}, "antonyms": [["left of", "right of"]]},
    )
    gen = CaptionNegatives("replace-rel", parser, seed=3, vocabulary=vocab)
    drawn = Counter(gen("the cup left of the plate", key=f"k{i}")[0][1] for i in range(800))
    assert set(drawn) == {"the cup right of the plate", "the cup above the plate"}
    assert 0.69 < drawn["the cup right of the plate"] / 800 < 0.81
    both = gen("the cup left of the plate", key="k", k=5)
    assert sorted(n for _, n in both) == ["the cup above the plate", "the cup right of the plate"]


def test_default_vocabulary_replacements_stay_in_class(parser):
    vocab = default_vocabulary()
    colours = {g[0] for g in vocab.classes["attributes"]["color"]} - {"red"}
    gen = CaptionNegatives("replace-att", parser, seed=1)
    got = {gen("a red cup", key=f"k{i}")[0][1] for i in range(200)}
    assert got and {n.split(" ")[1] for n in got} <= colours and len(got) > 5
    assert all(n.startswith("an ") == (n.split(" ")[1][0] in "aeiou") for n in got)  # "an orange cup"
    animals = {g[0] for g in vocab.classes["objects"]["animal"]} - {"dog"}
    gen = CaptionNegatives("replace-obj", parser, seed=1)
    got = {gen("a dog on a sofa", key=f"k{i}")[0][1] for i in range(100)} - {"a dog on a chair", "a dog on a bed"}
    replaced_dog = {n for n in got if not n.startswith("a dog ")}
    assert replaced_dog and all(n.split(" ")[1] in animals for n in replaced_dog)


def words(text: str) -> list[str]:
    return text.rstrip(".").split(" ")


def test_shuffles_keep_the_words(parser):
    caption = "a man riding a brown horse on the beach."
    original = words(caption)
    pos = [WORDS[w] for w in original]
    for i in range(30):
        out = dict(CaptionNegatives("shuffle", parser, seed=0)(caption, key=f"k{i}", k=5))
        assert set(out) == set(RULE_GROUPS["shuffle"])
        for name, negative in out.items():
            assert negative.endswith(".") and sorted(words(negative)) == sorted(original), (name, negative)
        fixed = [w for w, p in zip(original, pos) if p not in ("NOUN", "ADJ")]
        moved = words(out["shuffle-nouns-adj"])
        assert [w for w, p in zip(moved, pos) if p not in ("NOUN", "ADJ")] == fixed  # others stay in place
        assert all(WORDS[w] == p for w, p in zip(moved, pos))  # a noun slot holds a noun, an adjective slot one
        moved = words(out["shuffle-allbut-nouns-adj"])
        assert [w for w, p in zip(moved, pos) if p in ("NOUN", "ADJ")] == [
            w for w, p in zip(original, pos) if p in ("NOUN", "ADJ")
        ]
        trigrams = [original[j : j + 3] for j in range(0, 9, 3)]
        moved = words(out["shuffle-trigrams"])
        assert sorted(moved[j : j + 3] for j in range(0, 9, 3)) == sorted(trigrams)
        moved = words(out["shuffle-within-trigrams"])
        assert [sorted(moved[j : j + 3]) for j in range(0, 9, 3)] == [sorted(t) for t in trigrams]


def test_capital_moves_with_the_first_word(parser):
    out = CaptionNegatives("shuffle-words", parser, seed=0)("A dog chasing a cat", key="k", k=3)
    for _, negative in out:
        assert negative[0].isupper() and negative[1:] == negative[1:].lower(), negative


# -------------------------------------------------------------------------------------------------- determinism

CAPTIONS = [
    "A red cup and a blue plate.",
    "a man riding a brown horse on the beach",
    "the cup left of the plate",
    "two cups on a wooden table",
    "a white dog on a red sofa",
    "A red circle is left of a blue square.",
]


def all_negatives(gen: CaptionNegatives, n_keys: int = 20) -> list:
    return [gen(c, key=f"sample-{i}", k=2) for c in CAPTIONS for i in range(n_keys)]


def test_deterministic_across_generators_and_pickles(parser):
    first = all_negatives(CaptionNegatives("all", parser, seed=7))
    assert first == all_negatives(CaptionNegatives("all", parser, seed=7))
    used = CaptionNegatives("all", parser, seed=7)
    used("", key="k")
    copy = pickle.loads(pickle.dumps(used))
    assert not copy.skip_counts and used.skip_counts == {"empty": 1}  # a worker's copy counts from zero
    assert first == all_negatives(copy)
    # the draw depends on the seed too, and on nothing kept between calls (order of calls)
    assert first != all_negatives(CaptionNegatives("all", parser, seed=8))
    gen = CaptionNegatives("all", parser, seed=7)
    backwards = [gen(c, key=f"sample-{i}", k=2) for c in reversed(CAPTIONS) for i in reversed(range(20))]
    assert backwards[::-1] == first


def test_spacy_parser_pickles_without_its_pipeline(spacy_dir):
    parser = load_parser(f"spacy:{spacy_dir}")
    assert isinstance(parser, SpacyParser) and parser._nlp is not None  # loaded now: errors before the workers
    copy = pickle.loads(pickle.dumps(parser))
    assert copy._nlp is None and len(pickle.dumps(parser)) < 500
    assert copy.parse("a red cup") == parser.parse("a red cup") and copy._nlp is not None


def test_same_negatives_in_another_process(lexicon_file):
    """A fresh interpreter with another hash seed (str hashes differ) makes the same negatives; importing the
    library does not import spaCy."""
    script = (
        "import json, sys\n"
        "import hnc_clip, hnc_clip.negatives.rules as r, hnc_clip.negatives.parsers\n"
        "assert 'spacy' not in sys.modules, 'importing the negatives library imported spacy'\n"
        f"gen = r.CaptionNegatives('all', 'lexicon:{lexicon_file}', seed=7)\n"
        f"print(json.dumps([gen(c, key=f'sample-{{i}}', k=2) for c in {CAPTIONS!r} for i in range(20)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    here = all_negatives(CaptionNegatives("all", f"lexicon:{lexicon_file}", seed=7))
    assert json.loads(out.stdout) == [[list(p) for p in n] for n in here]


def test_keys_spread_the_choice_of_rule(parser):
    # a group is drawn first, then a rule in it: replace-att 1/2, swap-att and swap-obj 1/4 each
    gen = CaptionNegatives("swap-att,swap-obj,replace-att", parser, seed=0)
    picked = Counter(gen("A red cup and a blue plate.", key=f"img{i}")[0][0] for i in range(1200))
    assert set(picked) == {"swap-att", "swap-obj", "replace-att"}
    assert 530 < picked["replace-att"] < 670 and all(240 < picked[r] < 360 for r in ("swap-att", "swap-obj")), picked
    assert gen.rule_counts == picked
    # k = 2: the first round gives one negative from each group
    firsts = Counter(
        tuple(sorted(n for n, _ in gen("A red cup and a blue plate.", key=f"img{i}", k=2))) for i in range(200)
    )
    assert all("replace-att" in rules and len(rules) == 2 for rules in firsts), firsts
    # a rule that does not apply leaves its group to the others: swap-rel never applies here
    gen = CaptionNegatives("swap-rel,replace-att", parser, seed=0)
    assert {gen("A red cup and a blue plate.", key=f"img{i}")[0][0] for i in range(50)} == {"replace-att"}


def test_negatives_differ_from_caption_and_each_other(parser):
    gen = CaptionNegatives("all", parser, seed=0)
    for caption in [*CAPTIONS, "a cup and a cup", "a a a", "the the"]:
        for i in range(10):
            out = gen(caption, key=str(i), k=6)
            norms = [normalize(n) for _, n in out]
            assert all(norms) and normalize(caption) not in norms and len(set(norms)) == len(norms), (caption, out)
            assert all(name in RULES for name, _ in out)
    assert gen("a a a", key="0", k=3) == []  # every rearrangement reads the same


def test_generate_batch_equals_one_by_one(parser):
    captions = [*CAPTIONS, "", None, "a cup", "x" * 5000]
    keys = [f"k{i}" for i in range(len(captions))]
    one = CaptionNegatives("all", parser, seed=2)
    batch = CaptionNegatives("all", parser, seed=2)
    assert batch.generate_batch(captions, keys, k=2) == [one.generate(c, key, k=2) for c, key in zip(captions, keys)]
    assert batch.skip_counts == one.skip_counts and batch.rule_counts == one.rule_counts


# ------------------------------------------------------------------------------------------------ hostile input

HOSTILE = [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("x" * 100_000, "too_long"),
    ("a red\x00 cup", "control_chars"),
    ("a red cup\x1b[31m", "control_chars"),
    ("a red \ud800 cup", "invalid_unicode"),
    ("!!! ... ???", "no_words"),
    (None, "not_text"),
    (42, "not_text"),
    (b"a red cup", "not_text"),
    (["a red cup"], "not_text"),
]


@pytest.mark.parametrize("caption,reason", HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_captions_are_counted_skips(parser, caption, reason):
    gen = CaptionNegatives("all", parser, seed=0)
    assert gen(caption, key="k") == [] and gen.last_reason == reason and reason in UNPARSABLE_REASONS
    result = gen.generate(caption, key="k", k=3)
    assert result.negatives == () and result.reason == reason and result.unparsable
    assert gen.skip_counts == {reason: 2} and not gen.rule_counts


def test_over_long_caption_costs_no_parse():
    class Exploding(CaptionParser):
        spec = "exploding"

        def parse(self, text):
            raise AssertionError("parsed")

    gen = CaptionNegatives("all", Exploding(), max_chars=200)
    assert gen("a red cup " * 30, key="k") == [] and gen.last_reason == "too_long"


def test_a_failing_parser_is_a_counted_skip():
    class Flaky(LexiconParser):
        def parse(self, text):
            if "boom" in text:
                raise RuntimeError("tagger crashed")
            return super().parse(text)

        def parse_batch(self, texts):
            if any("boom" in t for t in texts):
                raise RuntimeError("batch crashed")
            return super().parse_batch(texts)

    class Liar(LexiconParser):  # tokens that do not rebuild the caption
        def parse(self, text):
            return ParsedCaption(text, super().parse(text + " extra").tokens)

    gen = CaptionNegatives("swap-att", Flaky(WORDS), seed=0)
    results = gen.generate_batch(["a red cup and a blue plate", "boom", "a blue cup and a red plate"], ["a", "b", "c"])
    assert [r.reason for r in results] == [None, "parser_error", None]
    assert results[0].negatives == (("swap-att", "a blue cup and a red plate"),)
    liar = CaptionNegatives("swap-att", Liar(WORDS))
    assert liar("a red cup and a blue plate", key="k") == [] and liar.last_reason == "parser_error"


def test_bad_arguments_are_named():
    lex = LexiconParser(WORDS)
    with pytest.raises(ValueError, match="k must be"):
        CaptionNegatives("all", lex)("a cup", key="k", k=-1)
    with pytest.raises(ValueError, match="max_chars"):
        CaptionNegatives("all", lex, max_chars=0)
    with pytest.raises(ValueError, match="2 captions but 1 keys"):
        CaptionNegatives("all", lex).generate_batch(["a", "b"], ["k"])


# ------------------------------------------------------------------------------------------------ rules and flags


def test_parse_rules_groups_and_names():
    assert parse_rules("swap,replace") == (*RULE_GROUPS["swap"], *RULE_GROUPS["replace"])
    assert parse_rules(" Replace-Rel , swap-att,swap-att") == ("swap-att", "replace-rel")
    assert parse_rules("all") == tuple(RULES) == parse_rules("shuffle,replace,swap")
    assert RULE_GROUPS["shuffle"] == tuple(n for n in RULES if n.startswith("shuffle-"))
    for bad in ("swap,colour", "", " , "):
        with pytest.raises(ValueError, match=FLAG) as err:
            parse_rules(bad)
        assert "swap-att" in str(err.value) and "replace" in str(err.value)


def test_rule_examples_hold():
    # each registry entry's documented example, on a lexicon that knows its words
    lex = LexiconParser({**WORDS, "riding": "VERB", "on": "ADP"})
    for name, rule in RULES.items():
        caption, negative = rule.example
        if name.startswith("replace"):
            continue  # drawn from the vocabulary: checked above with a vocabulary of two
        gen = CaptionNegatives(name, lex)
        found = {n for i in range(300) for _, n in gen(caption, key=str(i), k=3)}
        assert negative in found, (name, sorted(found)[:5])


# ---------------------------------------------------------------------------------------------------- parsers


def test_load_parser_specs(lexicon_file, spacy_dir):
    assert isinstance(load_parser(f"lexicon:{lexicon_file}"), LexiconParser)
    assert isinstance(load_parser(f"spacy:{spacy_dir}"), SpacyParser)
    for bad in ("nltk:punkt", "en_core_web_sm", "spacy:", 3):
        with pytest.raises(ValueError, match="--caption_parser") as err:
            load_parser(bad)
        assert "spacy:<" in str(err.value) and "lexicon:<" in str(err.value)


def test_missing_spacy_pipeline_names_the_install_command(tmp_path):
    pytest.importorskip("spacy")
    name = "en_core_web_zz"  # not a pipeline anyone installs
    with pytest.raises(ParserUnavailableError) as err:
        load_parser(f"spacy:{name}")
    assert f"'{name}' is not installed" in str(err.value) and f"python -m spacy download {name}" in str(err.value)
    with pytest.raises(ParserUnavailableError, match="no spaCy pipeline at .*nothing_here"):
        load_parser(f"spacy:{tmp_path / 'nothing_here'}")


def test_missing_spacy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` raises ImportError
    with pytest.raises(ParserUnavailableError, match=r'pip install "hnc-clip\[negatives\]"'):
        load_parser("spacy:en_core_web_sm")
    # a generator does not swallow it as a caption's parser_error
    with pytest.raises(ParserUnavailableError):
        CaptionNegatives("all", SpacyParser("en_core_web_sm"))("a red cup", key="k")


def test_lexicon_parser_tokens():
    parsed = LexiconParser({"Red": "ADJ", "cup": "NOUN", "t-shirt": "NOUN"}).parse("A red t-shirt, 2 cups!")
    assert [(t.text, t.ws, t.pos) for t in parsed.tokens] == [
        ("A", " ", "X"),
        ("red", " ", "ADJ"),
        ("t-shirt", "", "NOUN"),
        (",", " ", "PUNCT"),
        ("2", " ", "NUM"),
        ("cups", "", "X"),
        ("!", "", "PUNCT"),
    ]
    assert not parsed.has_dependencies


@pytest.mark.parametrize(
    "content,message",
    [({"cup": "NOUNS"}, "not a POS"), ({"two words": "NOUN"}, "not one word"), (["cup"], "JSON object")],
)
def test_lexicon_errors(tmp_path, content, message):
    path = tmp_path / "words.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_parser(f"lexicon:{path}")
    with pytest.raises(ParserUnavailableError, match="does not exist"):
        load_parser(f"lexicon:{tmp_path / 'none.json'}")


def test_spacy_dependencies_are_read_and_used():
    """A hand-parsed Doc (as en_core_web_sm would give): arcs, heads and noun chunks reach the rules, and swap-rel
    takes the verb's subject instead of the noun phrase next to the relation."""
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    vocab = spacy.blank("en").vocab
    words = "a man riding a horse on a beach".split()
    pos = ["DET", "NOUN", "VERB", "DET", "NOUN", "ADP", "DET", "NOUN"]
    deps = ["det", "nsubj", "ROOT", "det", "dobj", "prep", "det", "pobj"]
    heads = [1, 2, 2, 4, 2, 2, 7, 5]
    doc = Doc(vocab, words=words, spaces=[True] * 7 + [False], pos=pos, deps=deps, heads=heads)
    parsed = doc_to_parsed(doc)
    assert parsed.has_dependencies and parsed.noun_chunks == ((0, 2), (3, 5), (6, 8))
    assert [(t.dep, t.head) for t in parsed.tokens][5] == ("prep", 2)

    class OneDoc(CaptionParser):
        spec = "one-doc"

        def parse(self, text):
            return parsed

    with_deps = CaptionNegatives("swap-rel", OneDoc())("a man riding a horse on a beach", key="k")
    pos_only = CaptionNegatives("swap-rel", LexiconParser(WORDS))("a man riding a horse on a beach", key="k")
    assert with_deps == [("swap-rel", "a beach riding a horse on a man")]
    assert pos_only == [("swap-rel", "a man riding a beach on a horse")]


def test_partial_dep_annotation_is_no_parse(spacy_dir):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.load(spacy_dir)
    nlp.get_pipe("attribute_ruler").add([[{"LOWER": "cup"}]], {"DEP": "nsubj"})  # DEP on one token, no heads
    parsed = doc_to_parsed(nlp("a red cup on a table"))
    assert not parsed.has_dependencies and all(t.head == -1 and t.dep == "" for t in parsed.tokens)


# ------------------------------------------------------------------------------------------------- vocabulary


def test_default_vocabulary_is_package_data_and_consistent():
    vocab = default_vocabulary()
    assert os.path.isfile(REPO / "hnc_clip" / "negatives" / "vocabulary.json")
    setup = (REPO / "setup.cfg").read_text()
    assert "negatives/vocabulary.json" in setup.split("[options.package_data]")[1].split("[")[0]
    assert {"color", "size", "material", "shape"} <= set(vocab.classes["attributes"])
    assert "person" not in {p for g in vocab.classes["objects"]["person"] for p in g}  # no hypernym beside "man"
    assert vocab.antonyms["left of"] == ("right of",) and "below" in vocab.antonyms["above"]
    assert pickle.loads(pickle.dumps(vocab)).index == vocab.index


def test_user_vocabulary_extends_or_replaces(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"attributes": {"color": [["magenta"], ["crimson", "red"]], "mood": [["happy"]]}}))
    vocab = load_vocabulary(str(path))
    colours = vocab.classes["attributes"]["color"]
    assert ("magenta",) in colours and ("red", "crimson") in colours  # merged into red's group, not a new one
    assert "size" in vocab.classes["attributes"] and vocab.classes["attributes"]["mood"] == [("happy",)]
    path.write_text(json.dumps({"extend_default": False, "attributes": {"color": [["red"], ["green"]]}}))
    assert load_vocabulary(str(path)).classes == {
        "attributes": {"color": [("red",), ("green",)]},
        "objects": {},
        "relations": {},
    }


@pytest.mark.parametrize(
    "content,message",
    [
        ({"attributes": {"color": [["red"], ["red", "crimson"]]}}, r"attributes\.color\[1\].*already in group 0"),
        ({"attributes": {"color": "red"}}, r"attributes\.color: expected a list"),
        ({"attribute": {}}, "unknown keys"),
        ({"antonyms": [["left of"]]}, r"antonyms\[0\]"),
        ({"objects": {"x": [[""]]}}, r"objects\.x\[0\]\[0\]"),
        ({"extend_default": "yes"}, "extend_default"),
    ],
)
def test_vocabulary_errors_name_file_and_entry(tmp_path, content, message):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(content))
    with pytest.raises(VocabularyError, match=message) as err:
        load_vocabulary(str(path))
    assert str(err.value).startswith(f"--negative_vocabulary {path}")
    path.write_text("{not json")
    with pytest.raises(VocabularyError, match="not a UTF-8 JSON"):
        load_vocabulary(str(path))
