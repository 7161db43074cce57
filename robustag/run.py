"""A finished (or running) bench, read back: the typed reader of a run folder.

    with Run("runs/default") as run:
        run.cells()                 # one row per cell, metrics as columns
        run.per_post("ndcg@3")      # posts × cells
        run.compare("plain")        # paired tests against a reference defense
        run.report()                # RUN/report/

Opening writes nothing but a schema upgrade of a database from an older robustag (the parsed
plugin parameters became columns); a folder with no results database, or a damaged one, is refused.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robustag.report import HEADLINE, write_report
from robustag.archive import export_run, import_run
from robustag.errors import ParameterError
from robustag.stats import aggregate, compare_to_reference, design_mde, done_cells, flat_cells, seeds_needed
from robustag.store import ResultStore


class Run:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.store = ResultStore.existing(self.folder)

    @classmethod
    def from_archive(cls, archive: str | Path, folder: str | Path) -> "Run":
        """A run rebuilt from an archive (`robustag.archive`) in a new `folder`: reports, claims
        and statistics from a fresh clone, with no retraining."""
        return cls(import_run(archive, folder))

    def export(self, path: str | Path, metrics: list[str] | None = None) -> Path:
        """This run as one portable archive (`robustag.archive`; per-post values of `metrics` only
        when given)."""
        return export_run(self.folder, path, metrics)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        return f"<Run {self.folder}>"

    def cells(self, spec: str | None = None, status: str | None = None) -> pd.DataFrame:
        """One row per cell with its configuration and metrics; `attack_name` "clean" where a
        cell has no attack, `eps` empty (NaN) where it has no budget."""
        frame = flat_cells(self.store.cells(spec=spec, status=status))
        return frame.assign(attack_name=frame["attack_name"].fillna("clean"))

    def finished(self, spec: str | None = None) -> pd.DataFrame:
        """The finished cells (of `spec`) as the report reads them: one per computation, the later
        where a configuration and seed was computed twice (`stats.done_cells`), metrics as columns."""
        return done_cells(self.store, spec)

    def checks(self) -> pd.DataFrame:
        """The attacks' sanity checks (run on the first seed of each spec): a row per check,
        with the cell it checked, `passed` and what was measured."""
        return self.store.checks()

    def histories(self, spec: str | None = None) -> pd.DataFrame:
        """The per-epoch training record of every trained model (of `spec`): a row per model and
        epoch, with its data set, model, options, defense and seed beside every figure its
        training recorded (the loss, a defense's own figures, validation metrics, seconds)."""
        histories = self.store.histories()
        units = self.store.cells(spec=spec).drop_duplicates("unit")
        if histories.empty or units.empty:
            return pd.DataFrame()
        described = units.assign(poison=units["attack"].where(units["surface"] == "data"))  # what the training data had
        columns = ["unit", "dataset", "model", "params", "defense", "defense_name", "poison", "seed"]
        return described[columns].merge(histories, on="unit")

    @property
    def failed(self) -> int:
        return len(self.store.cells(status="failed"))

    def per_post(self, metric: str = "ndcg@3", spec: str | None = None) -> pd.DataFrame:
        """Per-post values of one metric: a row per test post, a column per done cell (its key)."""
        keys = list(self.store.cells(spec=spec, status="done")["key"])
        return self.store.per_post_frame(keys, metric)

    def compare(self, reference: str | None = None, metric: str = "ndcg@3", spec: str | None = None) -> pd.DataFrame:
        """Every configuration against `reference` (default: the run's) under the same data set,
        model, attack and budget, at method level (paired by seed, `robustag.stats`), Holm-corrected
        over the result."""
        cells = done_cells(self.store, spec)
        table = aggregate(self.store, cells, HEADLINE, ci_metrics=[])
        return compare_to_reference(self.store, table, metric, reference or self.store.meta("reference", "plain"))

    def power(self, effect: float, reference: str | None = None, metric: str = "ndcg@3", spec: str | None = None,
              seeds: int = 10) -> pd.DataFrame:
        """Designing the next run from this one as a pilot: for every comparison of `compare`,
        the effect this design could detect (80% power), the fewest seeds that would detect
        `effect` with the same test posts (NaN: no number of seeds would; more posts are needed),
        and the effect detectable with `seeds` seeds, from its variance components."""
        if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not effect > 0:
            raise ParameterError("effect", "expected a difference > 0 to detect", repr(effect))
        table = self.compare(reference, metric, spec)
        if table.empty:
            return table
        usable = table["var_seed"].notna()
        rows = table[usable]
        components = list(zip(rows["var_seed"], rows["var_post"], rows["var_residual"], rows["posts"]))
        return rows.assign(
            needed=[seeds_needed(*c[:3], posts=int(c[3]), effect=effect) for c in components],
            **{f"mde_at_{seeds}_seeds": [design_mde(*c[:3], seeds=seeds, posts=int(c[3])) for c in components]},
            effect=effect)[["dataset", "model", "params", "defense", "attack", "metric", "seeds", "posts", "diff", "mde",
                            "needed", f"mde_at_{seeds}_seeds", "effect"]]

    def report(self, reference: str | None = None, specs: list[str] | None = None) -> Path:
        """Write RUN/report/ (Markdown, HTML, LaTeX, CSV, plots) for `specs` (default: all);
        returns its folder."""
        return write_report(self.folder, reference, specs)
