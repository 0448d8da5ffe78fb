"""The paper's experiments, one call (and one `udg-fast experiment` command) each.

    >>> from pathlib import Path
    >>> from udg_fast import experiments as ex
    >>> ctx = ex.make_context(ex.Setup("ml-100k", out_dir=Path("results/ml-100k"), threads=1), "all")
    >>> ex.run_experiment("table2", ctx, seeds=[0, 1, 2], command="…")   # table2.md/.csv/.png
    >>> ex.run_all(ctx, seeds=[0, 1, 2], command="…")                   # + table3, tsne, table5, README.md

- table2: every base model with and without UDG (Log Loss, AUC, RMSE, RIG, gAUC, mean ± std) and
  the Figure-2 bar chart;
- table3: parameters and AUC of base, base with 2× embedding, base + UDG;
- tsne: Figure 3, the penultimate layer of PNN and PNN + UDG for two users' test samples;
- table5: the cold-start study of `udg_fast.coldstart` (when that module is present);
- all: the four + the report `README.md`. Finished runs are reused (`runner.Context`).
"""
from udg_fast.experiments.report import (EXPERIMENTS, environment, run_all, run_experiment,
                                         run_table5, write_report)
from udg_fast.experiments.runner import (VARIANTS, Context, ExperimentError, RunSpec, Setup, check_models,
                                         check_seeds)
from udg_fast.experiments.tables import run_table2, run_table3
from udg_fast.experiments.tsne import penultimate, run_tsne


def make_context(setup: Setup, models="all") -> Context:
    """Check the input and load the dataset (raises ExperimentError before any training)."""
    return Context(setup, check_models(models))


__all__ = ["EXPERIMENTS", "VARIANTS", "Context", "ExperimentError", "RunSpec", "Setup", "check_models",
           "check_seeds", "environment", "make_context", "penultimate", "run_all",
           "run_experiment", "run_table2", "run_table3", "run_table5", "run_tsne", "write_report"]
