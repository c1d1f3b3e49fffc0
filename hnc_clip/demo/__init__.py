"""The offline proof: a synthetic relational world in the HNC schemas (`world`) and the demo that pre-trains a small
CLIP on it, fine-tunes it with and without hard negatives, and evaluates both (`run`). It uses the library and the
applications; nothing in them imports it."""
