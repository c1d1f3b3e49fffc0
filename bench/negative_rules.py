"""Benchmark: rule-based negatives from plain captions (`hnc_clip.negatives.rules.CaptionNegatives`), captions/s in
one process for each rule group, per parser.

    python bench/negative_rules.py                     # 20,000 captions per measurement
    python bench/negative_rules.py --captions 200      # smoke run (the tests)

Parsers: the lexicon backend (`lexicon:<words.json>`, the vocabulary's words plus function words), a spaCy pipeline
built here (`spacy.blank("en")` + an `attribute_ruler` tagging the same words, saved with `nlp.to_disk` and loaded
through `load_parser("spacy:<folder>")`) and, when installed, `en_core_web_sm` (tagger + parser; its NER and
lemmatizer are left out by the loader). Captions: COCO-like, 8-16 words, drawn from the default vocabulary (an
attribute, an object, a verb or a relation, a place), seeded, distinct keys.

Per parser, `parse` is the parser alone; each group (`swap`, `replace`, `shuffle`, `all`) is `CaptionNegatives`
end to end, one caption per call (`gen(caption, key)`, what a DataLoader worker's `__getitem__` does) and in
batches of 256 (`generate_batch`, spaCy's `nlp.pipe`); `covered` is the share of captions that got a negative.
Time is the process's CPU time (`time.process_time`), so a shared machine's load does not count; wall time is
reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time

from hnc_clip.negatives.parsers import load_parser
from hnc_clip.negatives.rules import CaptionNegatives
from hnc_clip.negatives.vocabulary import default_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("swap", "replace", "shuffle", "all")
BATCH = 256

FUNCTION_WORDS = {
    **dict.fromkeys("a an the two three some".split(), "DET"),
    **dict.fromkeys("is are".split(), "AUX"),
    **dict.fromkeys("and or".split(), "CCONJ"),
    **dict.fromkeys("of on in at to near with by behind above below under".split(), "ADP"),
    **dict.fromkeys("left right front top".split(), "NOUN"),
    **dict.fromkeys("riding holding sitting standing eating walking looking lying parked".split(), "VERB"),
}
VERBS = ("riding", "holding", "sitting on", "standing next to", "eating", "looking at", "lying on", "walking past")


def lexicon_words() -> dict[str, str]:
    vocab = default_vocabulary()
    words = {}
    for kind, pos in (("attributes", "ADJ"), ("objects", "NOUN")):
        for groups in vocab.classes[kind].values():
            for group in groups:
                for phrase in group:
                    for w in phrase.replace("-", " ").split():
                        words.setdefault(w, pos)
    for w in FUNCTION_WORDS:
        words[w] = FUNCTION_WORDS[w]
    return words


def captions(n: int, seed: int = 0) -> list[str]:
    """COCO-like captions: "A small brown dog sitting on a wooden bench next to a white car in the park." etc."""
    vocab, rng = default_vocabulary(), random.Random(seed)
    attrs = [g[0] for c in ("color", "size", "material") for g in vocab.classes["attributes"][c]]
    objects = [g[0] for c, gs in vocab.classes["objects"].items() if c not in ("place", "shape") for g in gs]
    places = [g[0] for g in vocab.classes["objects"]["place"]]
    relations = [g[0] for g in vocab.classes["relations"]["spatial"]]
    out = []
    for _ in range(n):
        subject = f"{rng.choice(attrs)} {rng.choice(objects)}"
        link = rng.choice(VERBS) if rng.random() < 0.5 else f"{rng.choice(['is', ''])} {rng.choice(relations)}"
        text = f"a {subject} {link} a {rng.choice(attrs)} {rng.choice(objects)}"
        if rng.random() < 0.6:
            text += f" {rng.choice(['in', 'on', 'near'])} the {rng.choice(places)}"
        text = " ".join(text.split())
        out.append((text[0].upper() + text[1:] + ".") if rng.random() < 0.5 else text)
    return out


def built_spacy_pipeline(path: str, words: dict[str, str]) -> str:
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    by_pos: dict[str, list[str]] = {}
    for w, pos in words.items():
        by_pos.setdefault(pos, []).append(w)
    for pos, ws in by_pos.items():
        ruler.add([[{"LOWER": {"IN": ws}}]], {"POS": pos})
    ruler.add([[{"IS_PUNCT": True}]], {"POS": "PUNCT"})
    nlp.to_disk(path)
    return path


def timed(fn, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def one_by_one(gen: CaptionNegatives, texts: list[str], keys: list[str]) -> list:
    return [gen.generate(t, k) for t, k in zip(texts, keys, strict=True)]


def batched(gen: CaptionNegatives, texts: list[str], keys: list[str]) -> list:
    return [
        r for i in range(0, len(texts), BATCH) for r in gen.generate_batch(texts[i : i + BATCH], keys[i : i + BATCH])
    ]


def parse_all(parser, texts: list[str]) -> None:
    for t in texts:
        parser.parse(t)


def parse_batched(parser, texts: list[str]) -> None:
    for i in range(0, len(texts), BATCH):
        parser.parse_batch(texts[i : i + BATCH])


def measure(spec: str, texts: list[str]) -> dict:
    parser = load_parser(spec)
    keys = [f"sample-{i}" for i in range(len(texts))]
    parser.parse_batch(texts[:BATCH])  # warm-up (spaCy's first call builds its caches)
    row = {"parser": spec.split(":", 1)[0] if "en_core_web" not in spec else spec, "groups": {}}
    _, cpu, wall = timed(parse_all, parser, texts)
    row["parse"] = {"captions_per_s": len(texts) / cpu, "wall_captions_per_s": len(texts) / wall}
    _, cpu, wall = timed(parse_batched, parser, texts)
    row["parse_batch"] = {"captions_per_s": len(texts) / cpu, "wall_captions_per_s": len(texts) / wall}
    for group in GROUPS:
        gen = CaptionNegatives(group, parser, seed=0)
        results, cpu, wall = timed(one_by_one, gen, texts, keys)
        batch_results, cpu_b, _ = timed(batched, CaptionNegatives(group, parser, seed=0), texts, keys)
        assert batch_results == results, "generate_batch differs from generate"
        row["groups"][group] = {
            "captions_per_s": len(texts) / cpu,
            "wall_captions_per_s": len(texts) / wall,
            "batch_captions_per_s": len(texts) / cpu_b,
            "covered": sum(bool(r.negatives) for r in results) / len(texts),
            "rule_counts": dict(gen.rule_counts),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "negative_rules.json"))
    args = parser.parse_args()

    texts = captions(args.captions)
    words = lexicon_words()
    work = tempfile.mkdtemp(prefix="bench_negative_rules_")
    rows, notes = [], []
    try:
        lexicon = os.path.join(work, "words.json")
        with open(lexicon, "w") as f:
            json.dump(words, f)
        specs = [f"lexicon:{lexicon}"]
        try:
            import spacy

            specs.append(f"spacy:{built_spacy_pipeline(os.path.join(work, 'pipeline'), words)}")
            if spacy.util.is_package("en_core_web_sm"):
                specs.append("spacy:en_core_web_sm")
            else:
                notes.append("en_core_web_sm is not installed: not measured (python -m spacy download en_core_web_sm)")
        except ImportError:
            notes.append('spaCy is not installed: spaCy parsers not measured (pip install "hnc-clip[negatives]")')
        for spec in specs:
            rows.append(measure(spec, texts))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit = commit.stdout.strip()
    except OSError:
        commit = ""
    result = {"captions": len(texts), "commit": commit, "machine": platform.processor() or platform.machine()}
    result.update(cpu_count=os.cpu_count(), rows=rows, notes=notes, example=texts[:3])
    print(f"{len(texts):,} captions, e.g. {texts[0]!r}; CPU-time rates, one process")
    print(f"| parser | parse | parse_batch | {' | '.join(GROUPS)} | covered ({'/'.join(GROUPS)}) | all, batched |")
    print("|---|---|---|" + "---|" * len(GROUPS) + "---|---|")
    for row in rows:
        g = row["groups"]
        rates = " | ".join(f"{g[x]['captions_per_s']:,.0f}" for x in GROUPS)
        covered = "/".join(f"{g[x]['covered']:.0%}" for x in GROUPS)
        print(
            f"| {row['parser']} | {row['parse']['captions_per_s']:,.0f} | {row['parse_batch']['captions_per_s']:,.0f} "
            f"| {rates} | {covered} | {g['all']['batch_captions_per_s']:,.0f} |"
        )
    for note in notes:
        print("note:", note)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
