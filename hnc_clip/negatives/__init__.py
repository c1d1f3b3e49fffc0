"""Hard negatives made for plain image–caption data.

rules     rule-based negatives from a caption (swap, replace, shuffle), run in the DataLoader workers
parsers   caption parsers the rules read: a spaCy pipeline, or a closed-vocabulary lexicon
vocabulary  class vocabularies the replace rules draw from (`vocabulary.json`; `--negative_vocabulary` extends it)
lm        negatives written by a causal language model, precomputed into a table (`hnc-clip-negatives`)
parts     that table's per-process part files: resumed after a kill, merged in input order
"""
