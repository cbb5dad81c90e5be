"""Generated tokens/s of simtool's RoFormer-Sim sampling: KV-cached vs re-running the sequence per token (both
batched), and batched vs one candidate at a time (both cached).

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

    def rate(candidates: int, seed: int, use_cache: bool, one_at_a_time: bool = False) -> float:
        t, n = time.perf_counter(), 0
        if one_at_a_time:
            for text in texts:
                for k in range(candidates):
                    n += tokens(sample_continuations(model, [text], candidates=1, seed=seed * 1000 + k, **common))
        else:
            out = sample_continuations(model, texts, candidates=candidates, seed=seed, use_cache=use_cache, **common)
            n = tokens(out)
        return n / (time.perf_counter() - t)

    common = {"max_length": args.max_length}
    cached, recompute, single = [], [], []
    for r in range(args.rounds):
        cached.append(rate(args.candidates, r, True))
        recompute.append(rate(args.candidates, r, False))
        single.append(rate(args.candidates, r, True, one_at_a_time=True))
        print(
            f"round {r}: batched+cache {cached[-1]:.0f} tok/s, batched recompute {recompute[-1]:.0f} tok/s "
            f"(ratio {cached[-1] / recompute[-1]:.2f}), one-at-a-time+cache {single[-1]:.0f} tok/s "
            f"(ratio {cached[-1] / single[-1]:.2f})"
        )
    vs_recompute = [c / x for c, x in zip(cached, recompute, strict=True)]
    vs_single = [c / x for c, x in zip(cached, single, strict=True)]
    print(
        f"median: batched+cache {statistics.median(cached):.0f} tok/s; vs recompute {statistics.median(recompute):.0f}"
        f" tok/s ratio {statistics.median(vs_recompute):.2f} (per round {', '.join(f'{x:.2f}' for x in vs_recompute)})"
        f"; vs one-at-a-time {statistics.median(single):.0f} tok/s ratio {statistics.median(vs_single):.2f} "
        f"(per round {', '.join(f'{x:.2f}' for x in vs_single)})"
    )


if __name__ == "__main__":
    main()
