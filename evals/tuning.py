"""STS dev sets as tuning input for the reducers (``simtool whiten --tune-on``).

It lives in evals, not in ``simtool.reduce``, because it needs the STS readers: the core takes
the tuning set through a callable and never imports evals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simtool.errors import SimtoolError
from simtool.protocols import Encoder
from simtool.reduce.workflows import TuneSet, Tuning

from .readers import load_sts


def sts_tuning(path: str | Path, split: str = "dev") -> Tuning:
    """A tuning set maker for ``whiten_index``/``whiten_model``: raw embeddings of an STS split and its gold.

    ``path`` is in any format ``simtool eval sts`` reads; ``split="test"`` is refused at once so that
    reported test scores stay honest.
    """
    if split == "test":
        raise SimtoolError("tuning on the test split would leak it into the reported score; use tune_split='dev'")

    def make(model: Encoder) -> TuneSet:
        from simtool.encoder import encode_pairs

        data = load_sts(path, "auto", split)
        emb1, emb2 = encode_pairs(model, data.sentences1, data.sentences2)
        return emb1, emb2, np.asarray(data.scores, dtype=np.float64)

    return make
