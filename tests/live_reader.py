"""A reader process for the concurrency test: refresh, search, report, until told to stop.

``python -m tests.live_reader INDEX_DIR QUERIES.npy STOP_FILE`` prints one JSON line per search:
the generation it searched and the top-5 ``[id, version, score]``. No model is loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    from simtool.retriever import Retriever

    directory, queries, stop = Path(sys.argv[1]), np.load(sys.argv[2]), Path(sys.argv[3])
    with Retriever.load(directory, load_model=False) as r:
        while not stop.exists():
            r.refresh()
            scores, rows = r.search_vectors(queries, 5)
            hits = r.hits_for(scores, rows)
            out = [[[h.id, h.metadata.get("version", 0), h.score] for h in q] for q in hits]
            print(json.dumps({"generation": r.generation, "hits": out}), flush=True)


if __name__ == "__main__":
    main()
