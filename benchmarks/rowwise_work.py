"""The per-row Python work of ``bench_rowwise.py``, in its own small module (it imports only
``re``), so every engine's workers import the same function cheaply by name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# A quoted phrase, a number, or a word: a note such as 'said "ASAP", twice' has three tokens.
TOKEN = re.compile(r'"([^"]*)"|(\d+)|([A-Za-z]+)')


def note_score(note: Any) -> int:
    """One row's score: 1000 + length per quoted phrase, the value of each number, the length
    of each word (twice for capitalised ones). Missing or empty notes score 0."""
    if not isinstance(note, str) or not note:
        return 0  # pandas gives NaN, polars None, pyarrow "" for an empty field
    score = 0
    for quoted, number, word in TOKEN.findall(note):
        if quoted:
            score += 1000 + len(quoted)
        elif number:
            score += int(number)
        else:
            score += len(word) if word.islower() else 2 * len(word)
    return score


def score_notes(notes: Iterable[Any]) -> tuple[int, int, int]:
    """``(rows, rows with a non-zero score, total score)`` of a batch of notes, row by row."""
    rows = nonzero = total = 0
    for note in notes:
        score = note_score(note)
        rows += 1
        nonzero += score > 0
        total += score
    return rows, nonzero, total


def score_frame(frame: Any) -> Any:
    """Dask's per-partition function: one row of ``score_notes``'s counts."""
    import pandas as pd

    rows, nonzero, total = score_notes(frame["note"].tolist())
    return pd.DataFrame({"rows": [rows], "nonzero": [nonzero], "total": [total]})
