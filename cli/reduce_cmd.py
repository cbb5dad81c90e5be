"""``simtool whiten``, ``simtool project`` and ``simtool dims``: dimension reduction for an index or a model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from simtool.cli.common import EncodeBackend, IndexDir, Json, Model, Pooling, emit
from simtool.errors import SimtoolError

if TYPE_CHECKING:
    from simtool.reduce.projection import Distribution

Corpus = Annotated[Path | None, typer.Option("--corpus", help="Fit on this corpus encoded by --model (model mode).")]
Output = Annotated[Path | None, typer.Option("--output", help="Write the reduced model here (model mode).")]
Factory = Annotated[
    str | None, typer.Option("--factory", help="Index factory after reduction \\[default: the index's own].")
]


def _parse_dim(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        dim = int(value)
    except ValueError:
        raise SimtoolError(f"--dim must be a positive integer or 'auto', got {value!r}") from None
    if dim <= 0:
        raise SimtoolError(f"--dim must be a positive integer or 'auto', got {value!r}")
    return dim


def _parse_power(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise SimtoolError(f"--power must be a number or 'auto', got {value!r}") from None


def _mode(model: str | None, corpus: Path | None, output: Path | None) -> str:
    """ "model" when writing a reduced model (needs --corpus and --output), else "index"."""
    if output is None and corpus is None and model is None:
        return "index"
    if output is None or corpus is None:
        raise SimtoolError("model mode needs --corpus FILE and --output DIR (and optionally --model)")
    return "model"


def _report(reducer: Any, result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit(result)
        return
    grid = getattr(reducer, "grid_", [])
    if grid:
        typer.echo("dim  power  dev cosine Spearman x100")
        for row in grid:
            typer.echo(f"{row['dim']:>4} {row['power']:>6.2f}  {row['cosine_spearman']:.2f}")
    where = result.get("output") or result.get("index_dir")
    params = " ".join(f"{k}={result[k]}" for k in ("power", "eps", "distribution", "seed") if k in result)
    typer.echo(f"{result['kind']}: {result['in_dim']} -> {result['out_dim']} dims ({params}); wrote {where}")


def whiten(
    dim: Annotated[str | None, typer.Option("--dim", help="Dimensions to keep, or 'auto' \\[default: all].")] = None,
    power: Annotated[str, typer.Option("--power", help="0.5 = BERT-whitening, 0 = PCA, or 'auto'.")] = "0.5",
    eps: Annotated[
        float, typer.Option("--eps", help="Added to the eigenvalues (regularises rank-deficient fits).")
    ] = 0.0,
    tune_on: Annotated[
        Path | None, typer.Option("--tune-on", help="STS data to tune 'auto' on (any `simtool eval sts` format).")
    ] = None,
    tune_split: Annotated[str, typer.Option("--tune-split", help="Split of --tune-on; never test.")] = "dev",
    index_dir: IndexDir = None,
    factory: Factory = None,
    model: Model = None,
    pooling: Pooling = None,
    corpus: Corpus = None,
    output: Output = None,
    backend: EncodeBackend = "auto",
    json_out: Json = False,
) -> None:
    """BERT-whitening: fit (x - mean) U diag(lambda^-power)[:, :dim], then rebuild the index or write a model.

    With no --model/--corpus it fits on the current index's stored vectors and rebuilds that index
    at --dim dimensions; queries are then reduced the same way automatically.
    """
    k, p = _parse_dim(dim), _parse_power(power)
    if tune_on is None and "auto" in (k, p):
        raise SimtoolError("--dim/--power auto need --tune-on STS_PATH")
    tune = None
    if tune_on is not None:
        from simtool.evals.tuning import sts_tuning

        tune = sts_tuning(tune_on, tune_split)
    tuning: dict[str, Any] = {"dim": k, "power": p, "eps": eps, "tune": tune}
    if _mode(model, corpus, output) == "index":
        from simtool.reduce.workflows import whiten_index

        reducer, manifest = whiten_index(index_dir, **tuning, factory=factory, progress=not json_out)
        where = _index_result(index_dir, manifest)
    else:
        from simtool.reduce.workflows import whiten_model

        assert corpus is not None and output is not None  # _mode's "model" needs both
        reducer, out = whiten_model(corpus, output, model=model, pooling=pooling, **tuning, backend=backend)
        where = {"output": str(out), "backend": reducer.backend_}
    _report(reducer, {**reducer.config(), **where, "grid": reducer.grid_}, json_out)


def project(
    dim: Annotated[str, typer.Option("--dim", help="Dimensions, or 'auto' = round(8.33 ln N).")] = "auto",
    distribution: Annotated[str, typer.Option("--distribution", help="gaussian N(0, 1/k) or sparse.")] = "gaussian",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    index_dir: IndexDir = None,
    factory: Factory = None,
    model: Model = None,
    pooling: Pooling = None,
    corpus: Corpus = None,
    output: Output = None,
    json_out: Json = False,
) -> None:
    """Johnson-Lindenstrauss random projection of the current index (or of a model, with --corpus/--output)."""
    k = _parse_dim(dim) or "auto"
    dist = cast("Distribution", distribution)  # RandomProjection rejects any other value
    if _mode(model, corpus, output) == "index":
        from simtool.reduce.workflows import project_index

        reducer, manifest = project_index(
            index_dir,
            dim=k,
            distribution=dist,
            seed=seed,
            factory=factory,
            progress=not json_out,
        )
        where = _index_result(index_dir, manifest)
    else:
        from simtool.reduce.workflows import project_model

        assert corpus is not None and output is not None  # _mode's "model" needs both
        reducer, out = project_model(
            corpus,
            output,
            model=model,
            pooling=pooling,
            dim=k,
            distribution=dist,
            seed=seed,
        )
        where = {"output": str(out)}
    _report(reducer, {**reducer.config(), **where}, json_out)


def dims(
    n_vectors: Annotated[int, typer.Option("--n-vectors", help="How many vectors will be indexed.")],
    eps: Annotated[float, typer.Option("--eps", help="JL distortion bound, in (0, 1).")] = 0.1,
    model_dim: Annotated[int, typer.Option("--model-dim", help="The encoder's dimension to compare with.")] = 384,
    json_out: Json = False,
) -> None:
    """Dimension rules for N vectors: the 8.33 ln N entropy rule and the JL bound 24 ln N / eps^2."""
    from simtool.reduce.dims import entropy_dim, jl_dim

    if n_vectors < 2:
        raise SimtoolError(f"--n-vectors must be at least 2, got {n_vectors}")
    if not 0 < eps < 1:
        raise SimtoolError(f"--eps must be in (0, 1), got {eps}")
    rule, bound = entropy_dim(n_vectors), jl_dim(n_vectors, eps)
    if rule >= model_dim:
        note = f"the model's {model_dim} dims are at or below the 8.33 ln N rule: do not reduce"
    else:
        note = (
            f"the model's {model_dim} dims exceed the 8.33 ln N rule by {model_dim / rule:.1f}x: reducing to "
            f"~{max(rule, model_dim // 3)} is usually safe (check with `simtool eval`); the JL bound "
            f"{'exceeds' if bound > model_dim else 'is below'} {model_dim} and is a worst-case guarantee only"
        )
    result = {
        "n_vectors": n_vectors,
        "entropy_dim": rule,
        "jl_dim": bound,
        "eps": eps,
        "model_dim": model_dim,
        "ln_n": math.log(n_vectors),
        "note": note,
    }
    if json_out:
        emit(result)
    else:
        typer.echo(f"8.33 ln N rule:        {rule} dims  (N = {n_vectors:,}, ln N = {math.log(n_vectors):.2f})")
        typer.echo(f"JL bound 24 ln N/eps^2: {bound} dims  (eps = {eps})")
        typer.echo(note)


def _index_result(index_dir: Path | None, manifest: Any) -> dict[str, Any]:
    from simtool.config import resolve_index_dir

    return {"index_dir": str(resolve_index_dir(index_dir)), "factory": manifest.factory}
