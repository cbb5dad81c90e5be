"""Generated tokens/s of simtool's batched RoFormer-Sim sampling vs sampling one candidate at a time.

The model is the default MiniLM turned into a RoFormer-Sim stack (untrained LM head: the speed, not the text,
is measured). Both sides sample the same number of candidates per text with the same length budget; rounds
interleave, and the median and per-round ratios are printed.

    python benchmarks/bench_generate.py [--texts 4] [--candidates 8] [--max-length 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from simtool.roformer_sim import build_roformer_sim, sample_continuations

    torch.manual_seed(0)
    model = build_roformer_sim(None, device="cpu").eval()
    texts = ["a man is playing a guitar", "the cat sleeps on the mat", "stocks fell sharply", "it is raining"]
    texts = (texts * args.texts)[: args.texts]
    tok = model.tokenizer

    def tokens(out: list[list[str]]) -> int:
        return sum(len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for cands in out for c in cands)

    batched, single, ratios = [], [], []
    for r in range(args.rounds):
        t = time.perf_counter()
        out = sample_continuations(model, texts, candidates=args.candidates, max_length=args.max_length, seed=r)
        b = tokens(out) / (time.perf_counter() - t)
        t = time.perf_counter()
        n = 0
        for text in texts:
            for k in range(args.candidates):
                one = sample_continuations(model, [text], candidates=1, max_length=args.max_length, seed=r * 1000 + k)
                n += tokens(one)
        s = n / (time.perf_counter() - t)
        batched.append(b)
        single.append(s)
        ratios.append(b / s)
        print(f"round {r}: batched {b:.0f} tok/s, one-at-a-time {s:.0f} tok/s, ratio {b / s:.2f}")
    print(
        f"median: batched {statistics.median(batched):.0f} tok/s, one-at-a-time {statistics.median(single):.0f} "
        f"tok/s, ratio {statistics.median(ratios):.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)})"
    )


if __name__ == "__main__":
    main()
