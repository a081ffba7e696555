"""Results of an evaluation run: ``results.json`` (metrics with CIs, config, seeds, package versions,
metric definitions), ``report.md`` (tables) and PNGs (harmful rate by condition and by category, per
defence, with 95% CI bars); and the side-by-side comparison of several runs.

Example:
    >>> sorted(package_versions())[:2]
    ['alt-profanity-check', 'numpy']
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .metrics import METRIC_DEFINITIONS, compute_metrics

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"
_PACKAGES = ("alt-profanity-check", "numpy", "pillow", "safety-glasses-fggm", "scikit-learn", "tokenizers",
             "torch", "transformers")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages results depend on (None where absent), plus Python's.

    Example:
        >>> package_versions()["python"].count(".") >= 1
        True
    """
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3g}"


def _rate_ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("rate") is None:
        return "–"
    lo, hi = entry["ci95"]
    return f"{100 * entry['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


EMPTY_REPLY_LIMIT = 0.5
"""A defence whose share of empty replies exceeds this is flagged in ``warnings``."""


def empty_reply_warnings(by_defense: dict[str, Any]) -> list[str]:
    """Warnings for defences whose replies are mostly empty (their harmful rate says nothing).

    Example:
        >>> empty_reply_warnings({"aura": {"empty_replies": 0.9, "n_samples": 10}})[0].startswith("aura: 90%")
        True
    """
    out = []
    for name, m in by_defense.items():
        share = m.get("empty_replies")
        if share is not None and share > EMPTY_REPLY_LIMIT:
            out.append(f"{name}: {100 * share:.0f}% of {m.get('n_samples')} replies are empty, so its harmful rate "
                       "says nothing about safety (check the glasses' alphas and the model)")
    return out


def build_results(samples: Sequence[dict[str, Any]], *, safety_judges: Sequence[str], refusal_judge: str = "refusal",
                  defenses: Sequence[str] | None = None, config: dict[str, Any] | None = None,
                  n_boot: int = 1000, seed: int = 0, throughput: dict[str, Any] | None = None,
                  judge_scopes: dict[str, dict[str, str]] | None = None,
                  warnings: Sequence[str] = ()) -> dict[str, Any]:
    """Compute metrics per defence and assemble the ``results.json`` object.

    ``metrics`` holds the primary defence's metrics (the first configuration other than ``none``,
    else ``none``); ``by_defense`` every configuration's; ``rows`` one row per (defence, condition)
    with ``defense``, ``condition``, ``harmful_rate``, ``ci95``, ``n``, ``over_refusal``,
    ``vqa_accuracy``, ``perplexity``, ``toxicity``. ``judges`` carries what each judge measures
    (``judge_scopes``), ``judge_agreement`` the agreement of every pair of judges over all samples,
    and ``warnings`` the given ones plus a flag for each defence whose replies are mostly empty.

    Example:
        >>> r = build_results([], safety_judges=["profanity"], defenses=["none"])
        >>> r["primary_defense"], r["rows"]
        ('none', [])
    """
    names = list(defenses) if defenses else sorted({s["defense"] for s in samples})
    if not names:
        raise ValueError("no defence configurations to report")
    by_defense: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        subset = [s for s in samples if s["defense"] == name]
        by_defense[name] = compute_metrics(subset, safety_judges=safety_judges, refusal_judge=refusal_judge,
                                           n_boot=n_boot, seed=seed)
        for cond in sorted({s["condition"] for s in subset}):
            part = [s for s in subset if s["condition"] == cond]
            m = compute_metrics(part, safety_judges=safety_judges, refusal_judge=refusal_judge, n_boot=n_boot,
                                seed=seed)
            rows.append({"defense": name, "condition": cond, "harmful_rate": m["harmful_rate"]["overall"],
                         "ci95": m["harmful_rate"]["ci95"], "n": m["harmful_rate"]["n"],
                         "over_refusal": m["over_refusal"]["rate"], "vqa_accuracy": m["vqa_accuracy"]["rate"],
                         "perplexity": m["perplexity"], "toxicity": m["toxicity"]["overall"]})
    primary = next((n for n in names if n != "none"), names[0])
    from .metrics import judge_agreement

    chosen = [s for s in samples if s["defense"] in by_defense]
    return {
        "metrics": by_defense[primary],
        "primary_defense": primary,
        "by_defense": by_defense,
        "rows": rows,
        "judges": {"safety": list(safety_judges), "primary": safety_judges[0], "refusal": refusal_judge,
                   "scopes": dict(judge_scopes or {})},
        "judge_agreement": judge_agreement(chosen, list(safety_judges), refusal_judge),
        "warnings": [*warnings, *empty_reply_warnings(by_defense)],
        "metric_definitions": METRIC_DEFINITIONS,
        "config": config or {},
        "seeds": {"bootstrap": seed, "sampling": (config or {}).get("sampling", {}).get("seed")},
        "versions": package_versions(),
        "throughput": throughput or {},
    }


def _grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, list[dict[str, Any] | None]]) -> None:
    import numpy as np

    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, entries) in enumerate(series.items()):
        vals = [100 * e["rate"] if e and e.get("rate") is not None else np.nan for e in entries]
        lo = [100 * (e["rate"] - e["ci95"][0]) if e and e.get("ci95") else 0.0 for e in entries]
        hi = [100 * (e["ci95"][1] - e["rate"]) if e and e.get("ci95") else 0.0 for e in entries]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel("harmful rate (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)


def plot_harmful(results: dict[str, Any], path: str | Path, *, by: str = "condition") -> Path:
    """Bar chart of the harmful rate by condition (or category), one bar per defence, 95% CI bars.

    Example:
        >>> plot_harmful(results, "runs/x/harmful_rate_by_condition.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "by_condition" if by == "condition" else "by_category"
    defenses = list(results["by_defense"])
    groups = sorted({g for d in defenses for g in results["by_defense"][d]["harmful_rate"][key]})
    series = {d: [results["by_defense"][d]["harmful_rate"][key].get(g) for g in groups] for d in defenses}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2), 3.6))
    _grouped_bars(ax, groups, series)
    ax.set_title(f"Harmful rate by {by} ({results['judges']['primary']})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def render_markdown(results: dict[str, Any]) -> str:
    """``report.md``: harmful rate by defence x condition, by category, side metrics, judge agreement.

    Example:
        >>> "# MM-TOXIC-QA" in render_markdown(build_results([], safety_judges=["p"], defenses=["none"]))
        True
    """
    bd = results["by_defense"]
    defenses = list(bd)
    conds = sorted({c for d in defenses for c in bd[d]["harmful_rate"]["by_condition"]})
    cats = sorted({c for d in defenses for c in bd[d]["harmful_rate"]["by_category"]})
    lines = ["# MM-TOXIC-QA report", "",
             f"Primary judge: `{results['judges']['primary']}`; refusal judge: `{results['judges']['refusal']}`. "
             "Rates in %, 95% bootstrap CIs in brackets.", ""]
    if results.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    scopes = results["judges"].get("scopes") or {}
    if scopes:
        lines += ["## What the judges measure", "", "| judge | scope | measures |", "|---|---|---|"]
        lines += [f"| {j} | {v.get('scope')} | {v.get('measures')} |" for j, v in scopes.items()] + [""]
    lines += ["## Harmful rate by condition", "",
             "| defence | overall | " + " | ".join(conds) + " |",
             "|---|---|" + "---|" * len(conds)]
    for d in defenses:
        hr = bd[d]["harmful_rate"]
        overall = _rate_ci({"rate": hr["overall"], "ci95": hr["ci95"]})
        lines.append(f"| {d} | {overall} | " + " | ".join(_rate_ci(hr["by_condition"].get(c)) for c in conds) + " |")
    lines += ["", "## Harmful rate by category", "", "| defence | " + " | ".join(cats) + " |",
              "|---|" + "---|" * len(cats)]
    for d in defenses:
        hr = bd[d]["harmful_rate"]["by_category"]
        lines.append(f"| {d} | " + " | ".join(_rate_ci(hr.get(c)) for c in cats) + " |")
    refusal_conds = sorted({c for d in defenses for c in bd[d]["over_refusal"].get("by_condition") or {}})
    if refusal_conds:
        lines += ["", "## Over-refusal by condition", "", "| defence | " + " | ".join(refusal_conds) + " |",
                  "|---|" + "---|" * len(refusal_conds)]
        for d in defenses:
            by = bd[d]["over_refusal"].get("by_condition") or {}
            lines.append(f"| {d} | " + " | ".join(_fmt(by.get(c)) for c in refusal_conds) + " |")
    lines += ["", "## Other metrics", "",
              "| defence | toxicity | over-refusal, all conditions (%) | VQA acc. (%) | perplexity | distinct-1 | "
              "distinct-2 | fluency (LLM) | empty replies (%) | n |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in defenses:
        m = bd[d]
        lines.append(
            f"| {d} | {_fmt(m['toxicity']['overall'], False)} | {_rate_ci(m['over_refusal'])} | "
            f"{_rate_ci(m['vqa_accuracy'])} | {_fmt(m['perplexity'], False)} | {_fmt(m['distinct_1'], False)} | "
            f"{_fmt(m['distinct_2'], False)} | {_fmt(m['fluency_llm'], False)} | {_fmt(m.get('empty_replies'))} | "
            f"{m['n_samples']} |")
    agreements = [("all", a) for a in results.get("judge_agreement") or []]
    agreements += [(d, a) for d in defenses for a in bd[d]["judge_agreement"]]
    if agreements:
        lines += ["", "## Judge agreement", "",
                  "| defence | judges | rows | n | agreement (%) | Cohen's kappa |", "|---|---|---|---|---|---|"]
        for d, a in agreements:
            lines.append(f"| {d} | {' vs '.join(a['judges'])} | {a.get('rows', 'all')} | {a['n']} | "
                         f"{_fmt(a['percent_agreement'])} | {_fmt(a['cohen_kappa'], False)} |")
    tp = results.get("throughput") or {}
    if tp.get("samples_per_s"):
        lines += ["", f"Throughput: {tp['samples_per_s']:.2f} samples/s over {tp.get('new_samples')} new samples."]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in results["metric_definitions"].items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, results: dict[str, Any], *, plots: bool = True) -> dict[str, Path]:
    """Write ``results.json`` (atomically), ``report.md`` and the PNGs; returns their paths.

    Example:
        >>> paths = write_report("runs/x", results)  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    tmp = out / (RESULTS_NAME + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out / RESULTS_NAME)
    paths["results"] = out / RESULTS_NAME
    (out / REPORT_NAME).write_text(render_markdown(results))
    paths["report"] = out / REPORT_NAME
    if plots and results["by_defense"]:
        paths["by_condition"] = plot_harmful(results, out / "harmful_rate_by_condition.png", by="condition")
        paths["by_category"] = plot_harmful(results, out / "harmful_rate_by_category.png", by="category")
    return paths


def load_results(run: str | Path) -> dict[str, Any]:
    """``results.json`` of a run folder (or the file itself).

    Example:
        >>> load_results("/nonexistent")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no results.json in /nonexistent
    """
    p = Path(run)
    path = p / RESULTS_NAME if p.is_dir() or not p.suffix else p
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_NAME} in {run}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg})") from None
    if "by_defense" not in data and "rows" not in data:
        raise ValueError(f"{path} is not an evaluation results file (no by_defense or rows)")
    return data


def compare_rows(runs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per (run, defence): overall harmful rate with CI, per-condition rates, over-refusal,
    VQA accuracy and perplexity, for ``sgm compare``.

    Example:
        >>> compare_rows([])
        []
    """
    out = []
    for run in runs:
        res = load_results(run)
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        for name, m in (res.get("by_defense") or {}).items():
            hr = m["harmful_rate"]
            out.append({"run": label, "defense": name, "harmful_rate": hr["overall"], "ci95": hr["ci95"],
                        "by_condition": {c: e["rate"] for c, e in hr["by_condition"].items()},
                        "over_refusal": m["over_refusal"]["rate"], "vqa_accuracy": m["vqa_accuracy"]["rate"],
                        "perplexity": m["perplexity"], "judge": hr.get("judge_id")})
        if not res.get("by_defense"):  # organism-demo style: rows only
            for row in res["rows"]:
                out.append({"run": label, "defense": f"{row['defense']} ({row['condition']})",
                            "harmful_rate": row.get("harmful_rate"), "ci95": row.get("ci95"), "by_condition": {},
                            "over_refusal": row.get("over_refusal"), "vqa_accuracy": row.get("vqa_accuracy"),
                            "perplexity": row.get("perplexity"), "judge": None})
    return out


def plot_compare(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart of the overall harmful rate of every (run, defence), with 95% CI bars.

    Example:
        >>> plot_compare(compare_rows(["runs/a", "runs/b"]), "compare.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['run']}\n{r['defense']}" for r in rows]
    vals = [100 * r["harmful_rate"] if r["harmful_rate"] is not None else 0.0 for r in rows]
    err = [[100 * (r["harmful_rate"] - r["ci95"][0]) if r["ci95"] else 0.0 for r in rows],
           [100 * (r["ci95"][1] - r["harmful_rate"]) if r["ci95"] else 0.0 for r in rows]]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.8))
    ax.bar(range(len(rows)), vals, yerr=err, capsize=3, color="tab:red", alpha=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("harmful rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Harmful rate by run and defence (95% CI)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
