"""ARO's COCO-Order / Flickr30k-Order test cases: each Karpathy-test caption plus four word-order perturbations.

The logic of ARO's `dataset_zoo/perturbations.py` and `COCO_Order` (Yuksekgonul et al., ICLR 2023), reproduced
step for step so a seeded run makes the same test cases as the official code seeded the same way (`seed_all(1)` in
`main_aro.py`: the global `random` and NumPy generators):

1. `shuffle_nouns_and_adj`: spaCy `en_core_web_sm` tags; nouns (NN*) permuted among themselves, then adjectives (JJ*);
2. `shuffle_allbut_nouns_and_adj`: everything that is not a noun or adjective permuted;
3. `shuffle_within_trigrams`: `nltk.word_tokenize`, then each consecutive trigram shuffled in place;
4. `shuffle_trigrams`: the trigrams themselves shuffled;

each passed through BLIP's `pre_caption(caption, max_words=30)`, as the true caption is. The true caption is option 0
and the official `argmax` takes the first maximum, so a perturbation that scores the same as the caption (a
bag-of-words model, or a perturbation that changed nothing) counts as right.

spaCy's model and NLTK's tokenizer data are not installable from PyPI alone (`pip install hnc-clip[aro-order]`, then
`python -m spacy download en_core_web_sm` and `python -c "import nltk; nltk.download('punkt')"`). The tagger and the
tokenizer are therefore parameters: tests run the logic on hand-tagged captions, and a run with the real models
writes the test cases once (`<name>_test_cases.json`) so later runs need neither.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import numpy as np

NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
ADJ_TAGS = ("JJ", "JJR", "JJS")

Tagger = Callable[[str], Sequence[tuple[str, str]]]  # text -> [(token text, Penn tag)]
Tokenizer = Callable[[str], Sequence[str]]


def pre_caption(caption: str, max_words: int = 50) -> str:
    """ARO's (BLIP's) caption cleaning: lower-case, `.!"()*#:;~` -> space, spaces collapsed, first `max_words`."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def get_trigrams(tokens: Sequence[str]) -> list[list[str]]:
    trigrams, trigram = [], []
    for i, token in enumerate(tokens):
        trigram.append(token)
        if i % 3 == 2:
            trigrams.append(trigram[:])
            trigram = []
    if trigram:
        trigrams.append(trigram)
    return trigrams


class OrderPerturber:
    """The four perturbations, drawing from `np_rng` (NumPy legacy generator) and `py_rng` as the global ones."""

    def __init__(self, tagger: Tagger, tokenizer: Tokenizer, seed: int = 1):
        self.tagger, self.tokenizer = tagger, tokenizer
        self.np_rng = np.random.RandomState(seed)
        self.py_rng = random.Random(seed)

    def shuffle_nouns_and_adj(self, ex: str) -> str:
        tagged = list(self.tagger(ex))
        text = np.array([tok for tok, _ in tagged])
        noun_idx = [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS]
        adjective_idx = [i for i, (_, tag) in enumerate(tagged) if tag in ADJ_TAGS]
        text[noun_idx] = self.np_rng.permutation(text[noun_idx])
        text[adjective_idx] = self.np_rng.permutation(text[adjective_idx])
        return " ".join(text)

    def shuffle_allbut_nouns_and_adj(self, ex: str) -> str:
        tagged = list(self.tagger(ex))
        text = np.array([tok for tok, _ in tagged])
        noun_adj_idx = [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS + ADJ_TAGS]
        else_idx = np.ones(text.shape[0])
        else_idx[noun_adj_idx] = 0
        else_idx = else_idx.astype(bool)
        text[else_idx] = self.np_rng.permutation(text[else_idx])
        return " ".join(text)

    def shuffle_within_trigrams(self, ex: str) -> str:
        trigrams = get_trigrams(list(self.tokenizer(ex)))
        for trigram in trigrams:
            self.py_rng.shuffle(trigram)
        return " ".join(" ".join(trigram) for trigram in trigrams)

    def shuffle_trigrams(self, ex: str) -> str:
        trigrams = get_trigrams(list(self.tokenizer(ex)))
        self.py_rng.shuffle(trigrams)
        return " ".join(" ".join(trigram) for trigram in trigrams)

    def options(self, caption: str, max_words: int = 30) -> list[str]:
        """[true caption, 4 perturbations], each through `pre_caption`, in ARO's order."""
        out = [pre_caption(caption, max_words)]
        for fn in (
            self.shuffle_nouns_and_adj,
            self.shuffle_allbut_nouns_and_adj,
            self.shuffle_within_trigrams,
            self.shuffle_trigrams,
        ):
            out.append(pre_caption(fn(caption), max_words))
        return out


def order_test_cases(annotation: list[dict], perturber: OrderPerturber, max_words: int = 30) -> list[dict]:
    """ARO's `test_cases`: per image, per caption, `{"image", "caption_options"}` in annotation order."""
    cases = []
    for ann in annotation:
        for caption in ann["caption"]:
            cases.append({"image": ann["image"], "caption_options": perturber.options(caption, max_words)})
    return cases


def spacy_nltk_perturber(seed: int = 1) -> OrderPerturber:
    """The official tools: spaCy `en_core_web_sm` for tags and `nltk.word_tokenize` (optional extra `aro-order`)."""
    try:
        import nltk
        import spacy
    except ImportError as err:
        raise ImportError(
            "ARO's Order perturbations need spaCy and NLTK: pip install 'hnc-clip[aro-order]' && "
            "python -m spacy download en_core_web_sm && python -c \"import nltk; nltk.download('punkt')\" "
            "(or put the precomputed <name>_test_cases.json next to the annotation file)"
        ) from err
    nlp = spacy.load("en_core_web_sm")
    return OrderPerturber(lambda text: [(t.text, t.tag_) for t in nlp(text)], nltk.word_tokenize, seed)
