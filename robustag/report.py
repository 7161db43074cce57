"""Reports of a benchmark run: `RUN/report/` with Markdown, one self-contained HTML page
(plots embedded), LaTeX tables (booktabs) and CSV, one section per spec of the run. This module
decides what a section says (its tables, their notes, its text, from the statistics of
`robustag.stats`); `robustag.report_figures` draws its figures, `robustag.render` writes the
formats.

Every table marks significance against the reference defense: ▲/▼ when the method-level
comparison (`robustag.stats`: seeds and test posts both random), Holm-corrected within the
table, gives p < 0.05 with at least 3 seeds; the comparisons table gives each difference with
its interval.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from robustag.attack import ATTACKS
from robustag.checks import CHECKED_WITH
from robustag.defense import DEFENSES
from robustag.errors import ParameterError, RobustagError
from robustag.models import MODELS
from robustag.display import attack_labels, defense_labels, interval_text, labelled, model_labels, p_text
from robustag.plugins import parse_spec
from robustag.render import ReportTable, Section, render_html, render_latex, render_markdown
from robustag.report_figures import ranking_figure, robustness_figures, sensitivity_figures, training_figures
from robustag.robustness import worst_case
from robustag.stats import ALPHA, MIN_BLOCKS, MIN_SEEDS, aggregate, compare_to_reference, done_cells, friedman_ranking
from robustag.store import ResultStore

HEADLINE = ["f1@3", "ndcg@3", "f1@5", "ndcg@5", "f1@10", "ndcg@10"]
TESTED = ("f1@3", "ndcg@3")


def write_report(run: Path, reference: str | None = None, specs: list[str] | None = None) -> Path:
    """Write RUN/report/; `reference` (default: the run's own, plain) is the defense every
    comparison is against, for this report only; `specs` (default: all the run holds) the specs
    it covers, say the finished ones of a run still going."""
    store = ResultStore.existing(run)
    stored = store.specs()
    unknown = [name for name in specs or [] if name not in stored]
    if unknown:
        store.close()
        raise ParameterError("specs", f"no spec of that name in {run} (it has {', '.join(stored)})", unknown[0])
    if reference is not None:
        known = sorted(store.cells()["defense_name"].unique())
        if reference not in known:
            store.close()
            raise RobustagError(f"reference {reference!r}: no defense of that name in {run} (it has {', '.join(known)})")
    reference = reference or store.meta("reference", "plain")
    folder, staging = Path(run) / "report", Path(run) / ".report-new"
    try:
        _write_sections(store, staging, reference, specs, stored)
    except OSError as error:  # a full disk, a file-size limit, a read-only folder: the old report stays whole
        shutil.rmtree(staging, ignore_errors=True)
        raise RobustagError(f"report {folder}: could not be written ({error.strerror or error}); the previous "
                            "report, if any, is unchanged") from error
    finally:
        store.close()
    _swap(staging, folder)
    return folder


def _swap(staging: Path, folder: Path) -> None:
    """Put the new report where the old one was: renames, so a reader sees one or the other,
    never a report whose figures are gone; an old one that cannot be removed is left beside it."""
    old = folder.with_name(".report-old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _write_sections(store: ResultStore, folder: Path, reference: str, specs: list[str] | None, stored: list[str]) -> None:
    """Every file of the report, into `folder` (made anew)."""
    shutil.rmtree(folder, ignore_errors=True)
    figures = folder / "plots"
    figures.mkdir(parents=True)
    described = store.meta("specs", [])
    known = {spec["name"]: spec for spec in described}
    order = [s["name"] for s in described if s["name"] in stored] + [s for s in stored if s not in known]
    order = [name for name in order if specs is None or name in specs]
    tested: set = set()  # a comparison is tested once per report, in the first section that shows it
    sections = [spec_section(store, spec, reference, figures, known.get(spec, {}), tested) for spec in order]
    tuned = tuned_section(store, [known[name] for name in order if name in known])
    sections += [tuned] if tuned.tables else []
    sections.append(runtime_section(store, reference, order))
    environment = environment_info(store)
    (folder / "report.md").write_text(render_markdown(store.folder, sections, environment))
    (folder / "report.html").write_text(render_html(store.folder, sections, environment, figures))
    for section in sections:
        for table in section.tables:
            (folder / f"{table.name}.tex").write_text(render_latex(table))
            pd.DataFrame(table.rows, columns=table.header).to_csv(folder / f"{table.name}.csv", index=False)


def spec_section(store: ResultStore, spec: str, reference: str, figures: Path, described: dict,
                 tested: set | None = None) -> Section:
    section = Section(title=spec)
    published = described.get("published", {})
    cells = in_spec_order(done_cells(store, spec), described)
    statuses = store.cells(spec=spec)["status"]
    section.text += unfinished_note(statuses) + changed_plugin_notes(cells)
    superseded = int((statuses == "done").sum()) - len(cells)
    if superseded:
        section.text.append(f"{superseded} finished cells repeat a configuration and seed that a later run finished "
                            "again (after a release that changed the numbers, or a change of a plugin's code); only the later ones are shown and tested "
                            "(`robustag bench SPEC --prune` forgets the others).")
    if cells.empty:
        section.text.append("No finished cells yet.")
        return section
    labels = defense_labels(dict(zip(cells["defense"], cells["defense_params"])))
    cells = labelled(cells)
    model_label = dict(zip(zip(cells["model"], cells["params"]), cells["model_label"]))
    if described.get("tuned"):
        section.text.append(f"Tuned: the defenses this spec names bare ran, on each data set and model, at the "
                            f"configuration `robustag tune` chose on validation NDCG@3 with the same budget for each "
                            f"({len(described['tuned'])} tuned configurations; labels show where they differ).")
    promotion = [c for c in ("promotion@3", "promotion@10", "target_tag") if c in cells]
    table = aggregate(store, cells, HEADLINE + promotion, ci_metrics=TESTED)
    capped = capped_units(store, cells)
    unit_of = dict(zip(cells["key"], cells["unit"]))
    table["capped"] = table["cells"].map(lambda keys: any(unit_of[key] in capped for key in keys))
    table["defense_label"] = table["defense"].map(labels)
    table["model_label"] = [model_label[key] for key in zip(table["model"], table["params"])]
    table["attack_label"] = attack_labels(table)
    clean = table[table["surface"] == "none"]
    attacked = table[table["surface"] != "none"]
    clean_tests = compare_to_reference(store, clean, list(TESTED), reference, tested=tested)
    attack_tests = compare_to_reference(store, table, "ndcg@3", reference, change=True, tested=tested)
    repeated = clean_tests.attrs["already_tested"] + attack_tests.attrs["already_tested"]
    if repeated:
        section.text.append(f"{repeated} comparisons were tested in an earlier section of this report (the same cells) "
                            "and are not tested again here: they carry no mark and stay out of this section's Holm families.")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")
    section.tables.append(clean_table(f"{slug}-clean", clean, clean_tests, reference, published))
    if table["capped"].any():
        section.text.append(f"{CAPPED} A seed of this configuration ran every epoch it was given: early stopping never "
                            "triggered, so the model may not have converged; more epochs may change its figures.")
    if not attacked.empty:
        _attack_tables(section, store, cells, clean, attacked, attack_tests, reference, slug, described)
        section.figures += robustness_figures(clean, attacked, figures, slug)
    section.figures += training_figures(store, cells, figures, slug)
    section.figures += sensitivity_figures(clean, figures, slug)
    comparisons = comparisons_table(f"{slug}-comparisons", table, clean_tests, attack_tests, reference)
    section.tables += [comparisons] if comparisons.rows else []
    ranking = friedman_ranking(table, "ndcg@3")
    section.text += ranking_text(ranking, labels)
    section.figures += ranking_figure(ranking, labels, spec, figures, slug)
    section.text += mixed_device_warnings(cells)
    failed = store.cells(spec=spec, status="failed")
    if len(failed):
        section.text.append(f"{len(failed)} cells failed and are left out; `robustag results RUN --status failed` lists them.")
    return section


def _attack_tables(section: Section, store: ResultStore, cells, clean, attacked, attack_tests, reference: str, slug: str,
                   described: dict) -> None:
    """The tables of a section's attacks: threats, robustness, worst case, promotion, sanity checks."""
    section.tables.append(threat_table(f"{slug}-threats", cells, described.get("poison_valid", False)))
    section.tables.append(robustness_table(f"{slug}-robustness", clean, attacked, attack_tests, reference))
    worst = worst_case_table(f"{slug}-worst-case", store, cells)
    section.tables += [worst] if worst.rows else []
    promoted = promotion_table(f"{slug}-promotion", attacked)
    section.tables += [promoted] if promoted.rows else []
    checked, failures = checks_table(f"{slug}-checks", store, cells)
    if checked.rows:
        section.tables.append(checked)
        section.text += failures


def unfinished_note(statuses: pd.Series) -> list[str]:
    """A report written while its run is still going says so (from the status of each of a
    spec's cells): the tables and tests cover only the finished cells, and a comparison may lack
    seeds the spec asks for."""
    waiting = int((statuses == "pending").sum())
    if not waiting:
        return []
    return [f"Unfinished: {waiting} of {len(statuses)} cells of this spec have not run yet; the tables and tests "
            "below cover the finished ones only (resume the run, then write the report again)."]


def changed_plugin_notes(cells: pd.DataFrame) -> list[str]:
    """Cells computed by a plugin (from outside robustag) whose code has changed since: their
    stored code identity differs from that of the plugin loaded now (a plugin not loaded here
    cannot be compared, and is not mentioned)."""
    registries = {"model": (MODELS, "model"), "defense": (DEFENSES, "defense_name"), "poison": (ATTACKS, "attack_name"),
                  "attack": (ATTACKS, "attack_name")}
    stale: dict[tuple[str, str], int] = {}
    for _, cell in cells.iterrows():
        for kind, stored in json.loads(cell["config"]).get("code", {}).items():
            registry, column = registries[kind]
            name = cell[column]
            try:
                current = registry.code(name)
            except RobustagError:  # not loaded in this process: nothing to compare with
                continue
            if current != stored:
                stale[(kind, name)] = stale.get((kind, name), 0) + 1
    return [f"{count} cells were computed by an earlier version of the {kind} plugin {name!r} than the one loaded now "
            "(its code changed since); `robustag bench` with the plugin recomputes them."
            for (kind, name), count in stale.items()]


def mixed_device_warnings(cells: pd.DataFrame) -> list[str]:
    """Eager, compiled and GPU training differ by rounding, which grows over epochs into
    differences the size of a seed's: a comparison should not mix them."""
    devices = cells.groupby(["dataset", "model"])["device"].unique()
    return [f"Note: {dataset} / {model} cells ran on {', '.join(sorted(map(str, ran)))}; training on different devices "
            "or with and without --compile drifts apart by rounding, so their differences are not only the defenses'."
            for (dataset, model), ran in devices.items() if len(ran) > 1]


def in_spec_order(cells: pd.DataFrame, described: dict) -> pd.DataFrame:
    """Rows in the order the spec lists datasets, models, defenses and the values of each swept
    parameter (a run folder filled by several invocations stores them in the order they finished)."""
    def rank(values: pd.Series, listed: list):
        position = {value: k for k, value in enumerate(listed)}
        return values.map(lambda value: position.get(value, len(position)))

    defenses = [spec.partition(":")[0] for spec in described.get("defenses", [])]
    keys = pd.DataFrame({"dataset": rank(cells["dataset"], described.get("datasets", [])),
                         "model": rank(cells["model"], described.get("models", [])),
                         "defense": rank(cells["defense_name"], list(dict.fromkeys(defenses)))})
    params = cells["params"].map(json.loads)
    for name, values in described.get("params", {}).items():
        if isinstance(values, list):  # a sweep
            keys[name] = rank(params.map(lambda p: p.get(name)), values)
    return cells.loc[keys.sort_values(list(keys), kind="stable").index]


def runtime_section(store: ResultStore, reference: str, specs: list[str]) -> Section:
    """What training cost, per configuration and device: the cost side of every defense."""
    section = Section(title="Run time")
    cells = store.cells(status="done")
    histories = store.histories()
    trained = cells[(cells["surface"] == "none") & cells["model"].map(lambda model: MODELS.declared(model, "learned", True))].drop_duplicates("unit")
    if trained.empty or histories.empty or "seconds" not in histories:
        section.text.append("No trained models with a recorded history.")
        return section
    per_unit = histories.groupby("unit").agg(epochs=("epoch", "max"), epoch_seconds=("seconds", "median"))
    units = trained.join(per_unit, on="unit").dropna(subset=["epoch_seconds"])
    units = units.assign(defense_label=units["defense"].map(defense_labels(
        dict(zip(units["defense"], units["defense_params"].map(json.loads))))), model_label=model_labels(units))
    keys = ["dataset", "model", "params", "device"]
    table = units.groupby([*keys, "model_label", "defense", "defense_name", "defense_label"], sort=False).agg(
        n=("unit", "size"), epochs=("epochs", "mean"), epoch_seconds=("epoch_seconds", "mean"),
        train_seconds=("train_seconds", "mean")).reset_index()
    # the reference defense by name, as the paired tests take it (its first configuration if swept)
    base = table[table["defense_name"] == reference].drop_duplicates(keys).set_index(keys)["epoch_seconds"]
    table["ratio"] = table["epoch_seconds"] / table.join(base.rename("base"), on=keys)["base"]
    rows = [[*_label(row), row["device"], str(row["n"]), f"{row['epochs']:.1f}", f"{row['epoch_seconds']:.2f}",
             "" if np.isnan(row["ratio"]) else f"{row['ratio']:.2f}×", f"{row['train_seconds']:.0f}"]
            for _, row in table.iterrows()]
    header = ["dataset", "model", "defense", "device", "models", "epochs", "s / epoch", f"× {reference}", "train s"]
    note = ("Per trained model: epochs run (early stopping), median seconds per epoch (training steps only), total "
            "training seconds with validation; means over models. Times depend on the machine and on how many "
            "workers shared it; the ratio to the reference defense on the same device is the portable figure.")
    section.tables.append(ReportTable("runtime", "Training cost", header, rows, note))
    section.tables.append(compute_table(store, specs))
    return section


def tuned_section(store: ResultStore, described: list[dict]) -> Section:
    """The tuned configurations the run used (specs with a `tuned` table): per data set, model
    and defense, what differs from the defense's defaults and the model options it was tuned with."""
    section = Section(title="Tuned configurations")
    cells = store.cells()
    ran = set(zip(cells["dataset"], cells["model"], cells["defense"]))
    entries = {key: entry for spec in described for key, entry in spec.get("tuned", {}).items()}
    rows = []
    for key, entry in entries.items():
        dataset, model, name = key.rsplit("/", 2)  # a tsv: data set's name may hold slashes
        chosen = DEFENSES.create(entry["defense"])
        if (dataset, model, chosen.spec) not in ran:
            continue
        default = DEFENSES.create(name).spec
        changed = _spec_changes(default, chosen.spec)
        options = ", ".join(f"{k}={v}" for k, v in entry.get("params", {}).items())
        rows.append([dataset, model, name, changed or "its defaults", options])
    if rows:
        section.tables.append(ReportTable(
            "tuned", "Tuned configurations", ["dataset", "model", "defense", "tuned (against its defaults)", "model options"],
            rows, "Chosen on validation NDCG@3 by `robustag tune` with the same budget for every defense (the spec's "
                  "tuned table); a defense the spec names with parameters runs as written and is not listed."))
    return section


def _spec_changes(default: str, chosen: str) -> str:
    """The parameters of a canonical defense spec that differ from its defaults, as k=v."""
    before, after = parse_spec(default)[1], parse_spec(chosen)[1]
    return ", ".join(f"{k}={v}" for k, v in after.items() if before.get(k) != v)


def compute_table(store: ResultStore, specs: list[str]) -> ReportTable:
    """What each spec costs on its own, per dataset: a model shared by several specs counts in each."""
    rows = []
    for spec in specs:
        cells = store.cells(spec=spec, status="done")
        for dataset, group in cells.groupby("dataset", sort=False):
            units = group.drop_duplicates("unit")
            trained = units["model"].map(lambda model: MODELS.declared(model, "learned", True)).sum()
            rows.append([spec, dataset, ", ".join(sorted(group["device"].unique())), str(len(group)), str(trained),
                         f"{units['train_seconds'].sum() / 3600:.2f}", f"{group['seconds'].sum() / 60:.1f}"])
    header = ["spec", "dataset", "device", "cells", "trained models", "training h", "evaluation min"]
    note = ("Summed over models and cells as each ran in its worker (one worker's time, not the wall clock: "
            "workers run side by side). A model that several specs share counts in each, so a row is that "
            "spec's cost run alone.")
    return ReportTable("compute", "Compute per spec", header, rows, note)


def _mark(tests: pd.DataFrame, row, metric: str) -> str:
    """▲/▼ where the method-level comparison of this row is significant (Holm, its table's family)."""
    if tests.empty:
        return ""
    match = tests[(tests["defense"] == row["defense"]) & (tests["dataset"] == row["dataset"]) & (tests["metric"] == metric)
                  & (tests["attack"] == row["attack"]) & (tests["params"] == row["params"]) & (tests["model"] == row["model"])]
    if match.empty or not match.iloc[0]["significant"]:
        return ""
    return " ▲" if match.iloc[0]["diff"] > 0 else " ▼"


def _family_note(tests: pd.DataFrame, what: str) -> str:
    """What the marks of a table mean, the family Holm corrects over, and the seeds rule."""
    if tests.empty:
        return ""
    few = int((tests["seeds"] < MIN_SEEDS).sum())
    text = (f" Holm family: the {len(tests)} comparisons of this table ({what}), method level: paired by seed, "
            f"seeds and test posts both random (see the comparisons table).")
    if few:
        text += (f" {few} comparisons have fewer than {MIN_SEEDS} seeds: no method-level claim, so no mark, "
                 "whatever their p-value.")
    return text


def ranking_text(ranking: dict | None, labels: dict) -> list[str]:
    """Mean ranks of the defenses over independent blocks (`stats.friedman_ranking`), with the
    Iman–Davenport test only where enough blocks make it meaningful."""
    if ranking is None:
        return []
    ranks = ", ".join(f"{labels.get(d, d)} {r:.2f}" for d, r in ranking["ranks"].items())
    head = f"Mean ranks of the defenses by clean NDCG@3 over {ranking['blocks']} independent blocks (data set × model): {ranks}."
    if ranking["p_value"] is None:
        return [head + f" No rank test: fewer than {MIN_BLOCKS} blocks (or too few for any p < {ALPHA} to be "
                       "attainable), so the ranks describe these blocks and support no claim."]
    return [head + f" Iman–Davenport F = {ranking['statistic']:.2f}, p = {ranking['p_value']:.3g}."]


def comparisons_table(name: str, table: pd.DataFrame, clean_tests: pd.DataFrame, attack_tests: pd.DataFrame,
                      reference: str) -> ReportTable:
    """Every comparison against the reference at method level: the paired difference with its
    95% CI, relative to the reference, the Holm-corrected p in its table's family, the seeds,
    where the variance of the difference comes from; and the per-post test, labelled secondary."""
    frames = [t for t in (clean_tests, attack_tests) if not t.empty]
    if not frames:
        return ReportTable(name, "", [], [])
    tests = pd.concat(frames, ignore_index=True)
    attack_of = dict(zip(table["attack"], table["attack_label"]))
    label_of = dict(zip(table["defense"], table["defense_label"]))
    model_of = dict(zip(zip(table["model"], table["params"]), table["model_label"]))
    rows = []
    for _, test in tests.iterrows():
        what = "clean" if test["kind"] == "level" else f"change under {attack_of.get(test['attack'], test['attack'])}"
        mark = " ▲" if test["significant"] and test["diff"] > 0 else " ▼" if test["significant"] else ""
        rows.append([test["dataset"], model_of[(test["model"], test["params"])],
                     label_of.get(test["defense"], test["defense"]), what, test["metric"].upper(),
                     interval_text(test["diff"], test["ci_low"], test["ci_high"]) + mark,
                     interval_text(test["rel_diff"], test["rel_ci_low"], test["rel_ci_high"], "+.1%"),
                     f"{test['mde']:.4f}" if pd.notna(test["mde"]) else "", p_text(test["p_holm"]), str(test["seeds"]),
                     f"{test['seed_share']:.0%} / {test['post_share']:.0%} / {test['residual_share']:.0%}"
                     if pd.notna(test["seed_share"]) else "",
                     p_text(test["wilcoxon_p_holm"])])
    header = ["dataset", "model", "defense", "comparison", "metric", f"Δ vs {reference} [95% CI]", "relative Δ [CI]",
              "detectable Δ", "p (Holm)", "seeds", "Var(Δ): seeds / posts / residual", "per-post Wilcoxon p (Holm)"]
    shares = tests["seed_share"].dropna()
    note = (f"Δ: mean over seeds and test posts of the paired difference from {reference} (same seed: same "
            "initialisation and batch order); under attack, the difference of the changes from clean (attacked − clean), "
            "so ▲ means it loses significantly less. CI and p: crossed random effects of seed and post (Judd, Westfall "
            f"& Kenny 2012), posts clustered by item where the run stored them, t with calibrated df (robustag.stats); "
            f"detectable: the smallest true Δ found with 80% power by this design; Holm within each table's family (clean: "
            f"{len(clean_tests)} comparisons; robustness: {len(attack_tests)}). No ▲/▼ with fewer than {MIN_SEEDS} seeds. "
            "Var(Δ): the share of the variance of Δ due to seed-to-seed differences, to which posts are tested, and to "
            "the rest; a large seed share says more seeds, not more posts, would narrow the interval"
            + (f" (median seed share here: {shares.median():.0%})" if len(shares) else "") + ". The per-post Wilcoxon "
            "test (seed-averaged values) is about these trained models on this split, not about the methods.")
    return ReportTable(name, f"Method-level comparisons against {reference}", header, rows, note)






CAPPED = "†"


def capped_units(store: ResultStore, cells: pd.DataFrame) -> set[str]:
    """The trained models that ran all their epochs (early stopping never stopped them)."""
    histories = store.histories()
    if histories.empty:
        return set()
    epochs_run = histories.groupby("unit")["epoch"].max()
    allowed = cells.drop_duplicates("unit").set_index("unit")["params"].map(lambda p: json.loads(p).get("epochs"))
    both = pd.concat([epochs_run.rename("run"), allowed.rename("allowed")], axis=1, join="inner").dropna()
    return set(both.index[both["run"] >= both["allowed"]])


def _label(row) -> list[str]:
    defense = row["defense_label"] + (f" {CAPPED}" if row.get("capped", False) else "")
    return [row["dataset"], row["model_label"], defense]










def clean_table(name: str, clean: pd.DataFrame, tests: pd.DataFrame, reference: str, published: dict) -> ReportTable:
    header = ["dataset", "model", "defense", *[m.upper() for m in HEADLINE]]
    if published:
        header.append("paper F1@3 / NDCG@3")
    rows = []
    for _, row in clean.iterrows():
        cells = []
        for metric in HEADLINE:
            text = f"{row[f'{metric}_mean']:.4f} ± {row[f'{metric}_std']:.4f}"
            if metric in TESTED:
                text += f" [{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]" + _mark(tests, row, metric)
            cells.append(text)
        if published:
            paper = published.get(f"{row['dataset']}/{row['model']}/{row['defense_name']}")
            cells.append(f"{paper['f1@3']:.3f} / {paper['ndcg@3']:.3f}" if paper else "")
        rows.append([*_label(row), *cells])
    note = (f"Mean ± std over seeds; [95% bootstrap CI over test posts]; ▲/▼: significantly above/below "
            f"{reference} at method level (p < {ALPHA}, Holm)." + _family_note(tests, f"F1@3 and NDCG@3 against {reference}"))
    if published:
        note += " Paper: the figures published in the paper, on its own split and protocol."
    return ReportTable(name, "Clean test metrics", header, rows, note)


def robustness_table(name: str, clean: pd.DataFrame, attacked: pd.DataFrame, tests: pd.DataFrame, reference: str) -> ReportTable:
    columns = attacked.drop_duplicates("attack")
    header = ["dataset", "model", "defense", "clean NDCG@3", *columns["attack_label"]]
    rows = []
    for _, base in clean.iterrows():
        same = attacked[(attacked["dataset"] == base["dataset"]) & (attacked["model"] == base["model"])
                        & (attacked["params"] == base["params"]) & (attacked["defense"] == base["defense"])]
        cells = []
        for _, column in columns.iterrows():
            hit = same[same["attack"] == column["attack"]]
            if hit.empty:
                cells.append("")
                continue
            row = hit.iloc[0]
            drop = 1 - row["ndcg@3_mean"] / base["ndcg@3_mean"] if base["ndcg@3_mean"] else 0.0
            cells.append(f"{row['ndcg@3_mean']:.4f} ± {row['ndcg@3_std']:.4f} ({-drop:+.1%})" + _mark(tests, row, "ndcg@3"))
        rows.append([*_label(base), f"{base['ndcg@3_mean']:.4f}", *cells])
    note = (f"NDCG@3 under each attack, mean ± std over seeds (relative change from clean); ▲/▼: loses significantly "
            f"less/more than {reference} under the same attack (the change attacked − clean, per seed and post, against "
            f"{reference}'s; p < {ALPHA}, Holm)." + _family_note(tests, f"each defense's change under each attack against "
                                                               f"{reference}'s") +
            " ε is relative to the mean row norm of each perturbed table (absolute budgets: the threat-model table); "
            "poisoning attacks retrain on poisoned data and evaluate on the clean test posts.")
    return ReportTable(name, "Robustness: NDCG@3 under attack", header, rows, note)


def _is_bound(name: str) -> bool:
    return bool(ATTACKS.declared(name, "is_bound", False))


def _seed_mean(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"


def worst_case_table(name: str, store: ResultStore, cells: pd.DataFrame) -> ReportTable:
    """Per model and threat (budget, norm, perturbed tables): each post's worst NDCG@3 over all
    the evasion attacks run under that threat (AutoAttack's rule), averaged over posts, mean ±
    std over seeds; the certified lower bound under the same threat where one was run, and the
    attack gap between them (the true worst case lies in [bound, worst attack]); where the
    verifier ran (`exact`), the exact value with the share of posts it solved, split into what
    the attacks miss (attack − exact) and what the bound gives away (exact − bound); and
    broken@3, the share of posts with a clean hit in the top 3 that some attack leaves with none."""
    embedding = cells[cells["surface"] == "embedding"]
    embedding = embedding.assign(norm=embedding["attack_params"].map(lambda p: p.get("norm")),
                                 targets=embedding["attack_params"].map(lambda p: p.get("targets")),
                                 bound=embedding["attack_name"].map(_bound_label).astype(str))
    evasion = embedding[embedding["bound"] == ""]
    clean = cells[cells["surface"] == "none"].set_index(["dataset", "model", "params", "defense", "seed"])["key"]
    keys = ["dataset", "model", "params", "defense", "eps", "norm", "targets"]
    bound_of = embedding[embedding["bound"] == "certified bound"].set_index([*keys, "seed"])["ndcg@3"]
    verified = embedding[embedding["bound"] == "exact worst case"]
    exact_of = verified.set_index([*keys, "seed"])[["ndcg@3", "solved@3", "seconds"]] if len(verified) else None
    rows = []
    for key, group in evasion.groupby(keys, sort=False):
        worst, broken, certified, exact = {}, [], {}, {}
        for seed, per_seed in group.groupby("seed"):
            clean_key = clean.get((*key[:4], seed))
            if clean_key is None:
                continue
            cell_keys = list(per_seed["key"])
            ndcg, hits = store.per_post(cell_keys, "ndcg@3"), store.per_post([clean_key, *cell_keys], "p@3")
            figures = worst_case({"p@3": hits[clean_key]}, [{"ndcg@3": ndcg[k], "p@3": hits[k]} for k in cell_keys],
                                 ["ndcg@3"], [3])
            posts = len(hits[clean_key])
            worst[seed] = figures["worst_ndcg@3"]
            broken.append(figures["broken@3"])
            if (*key, seed) in bound_of.index:
                certified[seed] = float(bound_of[(*key, seed)])
            if exact_of is not None and (*key, seed) in exact_of.index:
                exact[seed] = exact_of.loc[(*key, seed)]
        if worst:
            first = group.iloc[0]
            row = [*_label(first), f"ε={key[4]:g} {key[5]} {key[6]}", str(group["attack"].nunique()),
                   _seed_mean(list(worst.values())), _seed_mean(list(certified.values())) if certified else "—",
                   _mean_difference(worst, certified)]
            if exact_of is not None:
                row += _exact_columns(exact, worst, certified, posts)
            rows.append([*row, f"{np.mean(broken):.1%}"])
    header = ["dataset", "model", "defense", "threat", "attacks", "worst NDCG@3 per post", "certified NDCG@3",
              "attack gap"] + (["exact NDCG@3", "attacks miss", "bound gives away", "verifier s / 1,000 posts"]
                              if exact_of is not None else []) + ["broken@3"]
    note = ("Each post's worst NDCG@3 over every evasion attack run under the same threat (budget, norm, perturbed "
            "tables), averaged over posts, mean ± std over seeds. Certified NDCG@3: the lower bound no perturbation in "
            "that budget can go below (the `certified` column; —: not run under that threat, or no certificate exists, "
            "as for models without linear score directions or perturbed tag tables); attack gap: worst attack − bound, mean over seeds; the true worst case lies "
            "between them. broken@3: share of posts with a clean hit in the top 3 that some attack leaves with none.")
    if exact_of is not None:
        note += (" Exact NDCG@3: the true worst case found by the complete verifier (`exact`), with the share of posts "
                 "it solved (an unsolved post counts at its sound lower end); attacks miss: worst attack − exact; bound "
                 "gives away: exact − certified; both means over seeds; the verifier's seconds per 1,000 test posts, "
                 "every metric at every cutoff, on this run's machine.")
    return ReportTable(name, "Worst case per post, and how far it may be from the true worst case", header, rows, note)


def _exact_columns(exact: dict, worst: dict, certified: dict, posts: int) -> list[str]:
    """The exact value (with the share of posts solved), what the attacks miss, what the bound
    gives away, and the verifier's cost; `exact`: per seed, the exact cell's figures."""
    if not exact:
        return ["—", "", "", ""]
    value = {seed: float(v["ndcg@3"]) for seed, v in exact.items()}
    solved, seconds = (np.mean([v[k] for v in exact.values()]) for k in ("solved@3", "seconds"))
    return [f"{_seed_mean(list(value.values()))} ({solved:.1%} solved)", _mean_difference(worst, value),
            _mean_difference(value, certified), f"{seconds * 1000 / posts:.0f}"]


def _bound_label(name: str) -> str:
    """'' for an attack; what a bound's numbers are (`bound_label`) for a bound."""
    return ATTACKS.declared(name, "bound_label", "certified bound") if _is_bound(name) else ""


def _mean_difference(upper: dict, lower: dict) -> str:
    """Mean over the seeds both have of upper − lower; '' where none."""
    seeds = sorted(set(upper) & set(lower))
    return f"{np.mean([upper[s] - lower[s] for s in seeds]):.4f}" if seeds else ""


# What a bound's column is, in the threat table's "the attacker knows" column.
BOUND_KNOWS = {"certified bound": "none: a guarantee over every perturbation in the budget",
               "exact worst case": "none: the exact minimum over every perturbation in the budget (complete verifier; "
                                   "a sound bracket where a post's search ran out)"}

# What an attacker of each threat model knows, where its attack states no description of its own.
KNOWS = {
    "label-aware": "the model (white box) and each test post's true tags: the worst case",
    "label-free": "the model (white box), not the test labels",
    "targeted": "the model (white box), not the test labels; it promotes a chosen tag",
}


def threat_table(name: str, cells: pd.DataFrame, poison_valid: bool = False) -> ReportTable:
    """What each attack column assumes: what the attacker knows, what it changes and how much,
    with the absolute per-row budgets the relative ε meant for these models (min–max)."""
    attacked = cells[cells["surface"] != "none"]
    attacked = attacked.assign(attack_label=attack_labels(attacked))
    rows = []
    for label, group in attacked.groupby("attack_label", sort=False):
        first = group.iloc[0]
        params = first["attack_params"]
        if first["surface"] == "data":
            rows.append([label, "poisoning", "the training data (not the model): it changes training posts",
                         f"training posts ({first['strength_name']} = {first['strength']:g})"
                         if pd.notna(first["strength"]) else "training posts", "", ""])
            continue
        threat_label = ATTACKS.declared(first["attack_name"], "threat_label")  # None: a plugin not loaded here
        threat = threat_label() if threat_label else "label-aware"
        knows = (BOUND_KNOWS[threat] if threat in BOUND_KNOWS
                 else ATTACKS.declared(first["attack_name"], "threat_description", "")
                 or KNOWS.get(threat, f"declared by the plugin ({threat})"))
        perturbs = f"{params.get('targets')} rows; {params.get('norm')} per row ≤ ε × the table's mean row norm"
        budgets = [f"{table} {group[column].min():.3g}–{group[column].max():.3g}"
                   for table in ("user", "item", "tag") if (column := f"budget_{table}") in group and group[column].notna().any()]
        rows.append([label, threat, knows, perturbs, f"{first['eps']:g}", ", ".join(budgets)])
    header = ["attack", "threat model", "the attacker knows", "it changes", "ε", "absolute budget per row"]
    validation = ("the validation posts are poisoned too (poison_valid), so early stopping sees poisoned data"
                  if poison_valid else "validation posts stay clean, so early stopping sees clean data (poison_valid = "
                  "false; `--poison-valid` poisons them too)")
    note = ("Evasion attacks perturb the test posts' embedding rows after training; poisoning attacks change training "
            f"posts and the model is retrained ({validation}). The absolute budget is ε × the mean row norm of each "
            "table, per trained model (range over models).")
    return ReportTable(name, "Threat models: what each attack assumes", header, rows, note)


def promotion_table(name: str, attacked: pd.DataFrame) -> ReportTable:
    """Attacks that promote a tag (poisoning `tag-promote`, evasion `targeted`): the share of
    test posts without the target whose top N holds it, mean ± std over seeds."""
    if "promotion@3_mean" not in attacked:
        return ReportTable(name, "", [], [])
    rows = []
    for _, row in attacked[attacked["promotion@3_mean"].notna()].iterrows():
        cells = [f"{row[f'promotion@{n}_mean']:.1%} ± {row[f'promotion@{n}_std']:.1%}" for n in (3, 10)]
        rows.append([*_label(row), row["attack_label"], f"{row['target_tag_mean']:g}", *cells])
    header = ["dataset", "model", "defense", "attack", "target tag", "promotion@3", "promotion@10"]
    note = "Share of the test posts that do not carry the target tag whose top N holds it after the attack."
    return ReportTable(name, "Targeted attacks: promotion of a chosen tag", header, rows, note)


def checks_table(name: str, store: ResultStore, cells: pd.DataFrame) -> tuple[ReportTable, list[str]]:
    """The stored sanity checks (`robustag.checks`, run on the first seed): ✓ or ✗ per check,
    and a loud line for each failure, to print under the table."""
    checks = store.checks()
    checks = checks[checks["cell"].isin(cells["key"])]
    if checks.empty:
        return ReportTable(name, "", [], []), []
    names = list(dict.fromkeys(checks["check"]))
    by_cell = cells.set_index("key")
    labels = attack_labels(by_cell)
    rows = []
    for cell, group in checks.groupby("cell", sort=False):
        marks = dict(zip(group["check"], group["passed"]))
        row = by_cell.loc[cell]
        rows.append([*_label(row), f"{labels[cell]} (seed {row['seed']})",
                     *["" if n not in marks else "✓" if marks[n] else "✗ FAILED" for n in names]])
    failures = [f"FAILED sanity check: {labels[row['cell']]} on {' '.join(_label(by_cell.loc[row['cell']]))}: "
                f"{row['check']} ({row['detail']})." for _, row in checks[~checks["passed"]].iterrows()]
    note = ("The gradient-masking checklist of Carlini et al. (2019) on the first seed: attacked NDCG@3 not rising from "
            "ε/2 to ε to 2ε; the attack below random directions of the same norm; converged (within 0.005 of the "
            "same attack at 100 steps); NDCG@3 ≤ 0.05 at ε = 5; no post's certified bound above the attack. A targeted attack "
            "is checked on its own goal, the promotion@3 of its target (rising in ε, above random noise, converged, ≥ 0.95 "
            "at ε = 5). A ✗ means the attack's figures may overstate robustness (or a bug): see the lines below the table.")
    fixed = sorted({f"{by_cell.loc[cell, 'attack_name']} ({found.group(1)})" for cell, detail in zip(checks["cell"], checks["detail"])
                    if (found := CHECKED_WITH.search(detail))})
    if fixed:
        note += f" Checked with parameters the attack fixes for its checks (`checked_with`): {', '.join(fixed)}."
    table = ReportTable(name, "Sanity checks of the attacks", ["dataset", "model", "defense", "attack", *names], rows, note)
    return table, failures


def environment_info(store: ResultStore) -> dict:
    cells = store.cells(status="done")
    return {
        "devices": sorted(cells["device"].dropna().unique().tolist()),
        "versions": sorted(cells["versions"].dropna().unique().tolist()),
        "git": sorted(cells["git"].dropna().unique().tolist()),
        "cells": int(len(cells)),
        "spec": store.meta("specs", []),
        "reference": store.meta("reference", "plain"),
    }


