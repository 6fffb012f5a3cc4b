"""Text fit: TF-IDF between a mission's text and a candidate's skills (French and English)."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

__all__ = ["FRENCH_STOP_WORDS", "make_vectorizer", "vectorizer_from_state", "vectorizer_state"]

FRENCH_STOP_WORDS = frozenset(
    """au aux avec ce ces dans de des du elle en et eux il ils je la le les leur lui ma mais me
    meme mes moi mon ne nos notre nous on ou par pas pour qu que qui sa se ses son sur ta te tes
    toi ton tu un une vos votre vous c d j l m n s t y ete etre avoir fait faire plus tout tous
    toute toutes cette cet sont est sera ont aussi comme dont si sans sous entre vers
    chez""".split()
)
STOP_WORDS = sorted(ENGLISH_STOP_WORDS | FRENCH_STOP_WORDS)


def make_vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(
        strip_accents="unicode",
        lowercase=True,
        stop_words=STOP_WORDS,
        token_pattern=r"(?u)\b[^\W\d_]{3,}\b",
        sublinear_tf=True,
        min_df=1,
        dtype=np.float64,
    )


def vectorizer_state(vec: TfidfVectorizer) -> dict:
    """A JSON-able state of a fitted vectorizer (no pickle)."""
    vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
    return {"vocabulary": vocab, "idf": [float(x) for x in vec.idf_]}


def vectorizer_from_state(state: dict) -> TfidfVectorizer:
    vec = make_vectorizer()
    vec.set_params(vocabulary={w: i for i, w in enumerate(state["vocabulary"])})
    # Fitting on the vocabulary itself sets every attribute; idf_ is then overwritten.
    vec.fit(state["vocabulary"] or ["empty"])
    vec.idf_ = np.asarray(state["idf"], dtype=np.float64)
    return vec
