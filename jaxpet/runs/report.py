"""Run summaries: the Markdown table (summary.md) and bar plot (summary.png) of a results.json.

`python -m jaxpet.runs.report OUT_DIR` (or `jaxpet report OUT_DIR`) regenerates both from the
folder.
Rows: zero-shot patterns, PET per pattern (mean ± std over seeds; per generation for iPET), the
merged ensemble, the distilled classifier and the supervised baseline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxpet.atomic import atomic_write
from jaxpet.runs import outputs

# one row: (setting, {metric: (mean, std, runs)})
Row = tuple[str, dict[str, tuple[float, float, int]]]


def _single(metrics: Mapping[str, float]) -> dict[str, tuple[float, float, int]]:
    return {name: (float(value), 0.0, 1) for name, value in metrics.items()}


def _stats(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, float, int]]:
    return {name: (s["mean"], s["std"], int(s.get("runs", 1))) for name, s in metrics.items()}


def _runs(stats: Mapping[str, tuple[float, float, int]]) -> str:
    runs = next(iter(stats.values()))[2] if stats else 0
    return f"{runs} run{'s' * (runs != 1)}"


def _ensemble_rows(stage: Mapping[str, Any], prefix: str) -> list[Row]:
    rows: list[Row] = []
    for pattern, metrics in stage.get("patterns", {}).items():
        stats = _stats(metrics)
        rows.append((f"{prefix}PET {pattern} ({_runs(stats)})", stats))
    if "pet" in stage and len(stage.get("patterns", {})) > 1:
        rows.append((f"{prefix}PET, all patterns (mean)", _stats(stage["pet"])))
    if "ensemble" in stage:
        ensemble = stage["ensemble"]
        rows.append((f"{prefix}ensemble ({ensemble['reduction']} of {len(ensemble['members'])})",
                     _single(ensemble["metrics"])))
    return rows


def summary_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows, in pipeline order."""
    rows: list[Row] = []
    for key, label in (("zero_shot", "zero-shot {p}"),
                       ("zero_shot_after_mlm_pretrain", "zero-shot {p} after MLM warm-up")):
        for pattern, metrics in results.get(key, {}).items():
            rows.append((label.format(p=pattern), _single(metrics)))
    if "generations" in results:
        for name, stage in results["generations"].items():
            rows += _ensemble_rows(stage, f"iPET {name} ")
    else:
        rows += _ensemble_rows(results, "")
    if "distilled" in results:
        rows.append(("distilled classifier", _single(results["distilled"]["metrics"])))
    if "classifier" in results:
        stats = _stats(results["classifier"]["summary"])
        rows.append((f"sequence classifier ({_runs(stats)})", stats))
    return rows


def _cell(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return ""
    mean, std, runs = stats
    return f"{mean:.3f} ± {std:.3f}" if runs > 1 else f"{mean:.3f}"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def results_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of a run's results.json (title line, table, notes)."""
    rows = summary_rows(results)
    names = list(dict.fromkeys(m for _, metrics in rows for m in metrics))
    title = (f"{results.get('task')} ({results.get('eval_set')} set, {results.get('num_eval')} "
             f"examples; {results.get('num_train')} labeled, {results.get('num_unlabeled')} "
             f"unlabeled), model {results.get('model')}, method {results.get('method', 'pet')}")
    lines = [title]
    if rows:
        cells = [[label, *(_cell(metrics.get(n)) for n in names)] for label, metrics in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells))
                  for i, h in enumerate(["setting", *names])]
        lines += ["", _line(["setting", *names], widths),
                  "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [_line(c, widths) for c in cells]
    if "mlm_pretrain" in results:
        stage = results["mlm_pretrain"]
        lines += ["", f"MLM warm-up: {stage.get('steps')} steps on {stage.get('sequences')} "
                  f"sequences; model in {stage.get('model_dir')}"]
    if results.get("distilled", {}).get("model_dir"):  # none when output.save_models is none
        lines += ["", f"distilled model (Hugging Face format): {results['distilled']['model_dir']}"]
    if "wall_time_s" in results:
        lines += ["", f"wall time: {results['wall_time_s']:.0f} s"]
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: Path) -> Path | None:
    """A horizontal bar chart of the first metric of every row (error bars: std over seeds)."""
    rows = summary_rows(results)
    if not rows:
        return None
    # deferred: pyplot takes a second to load, and its backend is process-wide state that
    # only a plot should set
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(iter(rows[0][1]))
    shown = [(label, stats[metric]) for label, stats in rows if metric in stats]
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(shown) + 1.2))
    try:
        positions = list(range(len(shown)))[::-1]
        ax.barh(positions, [s[0] for _, s in shown], xerr=[s[1] for _, s in shown],
                color="tab:blue", capsize=3)
        ax.set_yticks(positions, [label for label, _ in shown], fontsize=8)
        ax.set_xlabel(f"{metric} ({results.get('eval_set')} set)")
        ax.set_xlim(0, 1)
        ax.set_title(f"{results.get('task')}: {results.get('method', 'pet')}, "
                     f"{results.get('num_train')} labeled examples", fontsize=9)
        fig.tight_layout()
        # a temporary file of its own (every process of a multi-process run writes one), then
        # renamed: atomic, as every output of a run
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    finally:
        plt.close(fig)
    return path


def write_report(output_dir: str | Path, results: Mapping[str, Any] | None = None) -> str:
    """Writes summary.md and summary.png of a run folder; returns the table."""
    out = Path(output_dir)
    if results is None:
        path = out / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; is {out} the output_dir of a run?")
        results = outputs.read_json(path)
    table = results_table(results)
    outputs.write_text(out / "summary.md", table + "\n\n![results](summary.png)\n")
    plot(results, out / "summary.png")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxpet report",
                                     description="Regenerate summary.md and summary.png of a run "
                                                 "folder and print its results table.")
    parser.add_argument("output_dir", help="the run's output_dir (holds results.json)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        print(write_report(args.output_dir))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
