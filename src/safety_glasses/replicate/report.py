"""``results.json``, ``report.md`` and the PNG of an AurA replication run.

AurA's published figures (Suau et al., "Whispering Experts", ICML 2024): dampening expert units cut the
toxicity of continuations by up to 2.2x (e.g. on RealToxicityPrompts with Mistral-7B) for an increase
of 0.72 in perplexity.

Example:
    >>> write_outputs(results, "runs/aura")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["AURA_PUBLISHED", "TARGETS", "write_outputs", "render_report", "plot_results"]

AURA_PUBLISHED = {"toxicity_cut": 2.2, "perplexity_increase": 0.72,
                  "source": "AurA (Suau et al., ICML 2024): up to 2.2x less toxicity for +0.72 perplexity"}
TARGETS = {"toxicity_cut": 2.0, "perplexity_change": 0.10}
PNG_NAME = "aura_replication.png"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _ci(ci: Any, fmt: str = "{:.3f}") -> str:
    return "-" if not ci else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _verdicts(rows: list[dict[str, Any]], selected: str | None = None) -> list[str]:
    by = {r["defense"]: r for r in rows}
    lines = []
    head = selected if selected in by else "aura"
    aura = by.get(head)
    if aura is not None and "toxicity_cut" in aura:
        what = f"{head} (selected on validation)" if head == selected else head
        cut, dppl = aura["toxicity_cut"], aura["perplexity_change"]
        lo, hi = aura["ci95_toxicity_cut"]
        met = "met" if lo >= TARGETS["toxicity_cut"] else ("not shown (CI reaches below 2x)" if cut >= 2 else "missed")
        lines.append(f"- toxicity cut by {what}: **{cut:.2f}x** (95 % CI {lo:.2f}-{hi:.2f}); target >= 2x: {met}")
        ok = "met" if dppl <= TARGETS["perplexity_change"] else "missed"
        lines.append(f"- perplexity change by {what}: **{100 * dppl:+.1f} %**; target <= +10 %: {ok}")
    controls = [f"shuffled:{head}"] if f"shuffled:{head}" in by else []
    controls += ["random"] if "random" in by else []
    for name in controls:
        rnd = by[name]
        if aura is not None and "toxicity_cut" in rnd:
            lines.append(f"- control {name}: {rnd['toxicity_cut']:.2f}x ({head} {aura['toxicity_cut']:.2f}x); the "
                         "control should cut far less")
    others = ["aura", "det0", "damp", *(r["defense"] for r in rows if ":" in r["defense"])]
    for name in dict.fromkeys(n for n in others if n != head and n not in controls):
        r = by.get(name)
        if r is not None and "toxicity_cut" in r:
            lines.append(f"- {name}: {r['toxicity_cut']:.2f}x less toxicity, perplexity {100 * r['perplexity_change']:+.1f} % "
                         f"({r['experts']} units)")
    return lines


def render_report(results: dict[str, Any]) -> str:
    """The markdown report of one run.

    Example:
        >>> render_report({"rows": [], "model": "m", "concepts": {}, "config": {}, "timings": {}, "throughput": {}})[:8]
        '# AurA r'
    """
    rows = results["rows"]
    out = [f"# AurA replicated on {results['model']}", ""]
    c = results.get("concepts", {})
    cfg = results.get("config", {})
    counts = c.get("counts", {})
    out += [f"Concept set: {counts.get('toxic', '?')} toxic / {counts.get('non-toxic', '?')} non-toxic rows "
            f"(own continuations {c.get('own', {})}, corpus {c.get('corpus', {})}); pooling {cfg.get('pooling')} over "
            f"{cfg.get('positions')} tokens; AUROC threshold {cfg.get('threshold')}.", ""]
    selected = results.get("selected")
    out += _table(rows, selected)
    out += ["", *_unit_lines(results.get("units", {}).get("variants", {}))]
    val = results.get("validation")
    if val:
        out += ["## Validation (settings chosen here, never on the held-out openings)", "",
                f"Rule: {val.get('rule')}. Selected: **{val.get('selected')}**.", "", *_table(val["rows"], selected), ""]
    out += ["", f"Published (AurA): up to {AURA_PUBLISHED['toxicity_cut']}x less toxicity for "
            f"+{AURA_PUBLISHED['perplexity_increase']} perplexity ({AURA_PUBLISHED['source'].split(':')[0]}).", ""]
    out += ["## Against the targets (held-out)", "", *_verdicts(rows, selected), ""]
    tp, tm = results.get("throughput", {}), results.get("timings", {})
    ev = tp.get("eval", {}) or {}
    out += ["## Cost", "",
            f"- timings (s): {', '.join(f'{k} {v}' for k, v in tm.items())}",
            f"- held-out generation: {ev.get('new_samples', 0)} new samples at {ev.get('samples_per_s')} samples/s; "
            f"concept generation: {_rate(tp.get('concept_generation_samples_per_s'))}", ""]
    out += ["## What the judges measure", ""]
    out += [f"- `{jid}`: {what}" for jid, what in results.get("judges", {}).items()]
    out += ["", "Both judges are lexical: they score offensive words, under-score implicit hate without slurs, "
            "and do not judge harmful help. Toxicity is scored on the continuation alone, not the prompt.", ""]
    return "\n".join(out)


def _table(rows: list[dict[str, Any]], selected: str | None) -> list[str]:
    out = ["| defence | units | toxicity mean | 95 % CI | toxic share | profanity mean | perplexity | cut | ppl change | n |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cut = f"{r['toxicity_cut']:.2f}x {_ci(r.get('ci95_toxicity_cut'), '{:.2f}')}" if "toxicity_cut" in r else "-"
        dp = f"{100 * r['perplexity_change']:+.1f} %" if "perplexity_change" in r else "-"
        name = f"**{r['defense']}** (selected)" if r["defense"] == selected else r["defense"]
        out.append(f"| {name} | {r.get('experts', 0)} | {r['toxicity_mean']:.3f} | {_ci(r['ci95'])} | "
                   f"{100 * r['toxic_share']:.1f} % | {r['profanity_mean']:.3f} | {r['perplexity']:.2f} | {cut} | {dp} | {r['n']} |")
    return out


def _unit_lines(variants: dict[str, Any]) -> list[str]:
    """Units passing each expert rule per recording variant: real labels, permuted labels, fewer rows."""
    if not variants:
        return []
    out = ["## Experts per recording variant", "",
           "Units passing AUROC > 0.5, AUROC >= 0.75 and the Benjamini-Hochberg cut (`fdr_q`: AUROC significantly "
           "above 0.5), with the real labels and with the labels permuted once (what chance alone gives).", "",
           "| pooling/positions | units | labels | toxic / non-toxic rows | AUROC > 0.5 | AUROC >= 0.75 | max AUROC | significant |",
           "|---|---:|---|---|---:|---:|---:|---|"]
    for key, st in variants.items():
        for which in ("real", "permuted"):
            c = st.get(which)
            if not c:
                continue
            sig = ", ".join(f"{k}: {v}" for k, v in c.items() if k.startswith("fdr_"))
            out.append(f"| {key} | {st['units']} | {which} | {st['n_pos']} / {st['n_neg']} | {c['auroc_over_0.5']} | "
                       f"{c['auroc_over_0.75']} | {c['max_auroc']} | {sig} |")
    first = next(iter(variants.values()))
    if first.get("by_rows"):
        key = next(iter(variants))
        out += ["", f"With fewer concept rows ({key}; the first share of each class in a random order):", "",
                "| toxic / non-toxic rows | AUROC > 0.5 | AUROC >= 0.75 | significant |", "|---|---:|---:|---|"]
        for b in first["by_rows"]:
            sig = ", ".join(f"{k}: {v}" for k, v in b.items() if k.startswith("fdr_"))
            out.append(f"| {b['n_pos']} / {b['n_neg']} | {b['auroc_over_0.5']} | {b['auroc_over_0.75']} | {sig} |")
    return out + [""]


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Toxicity (mean with 95 % CI, and share > 0.5) and perplexity per defence.

    Example:
        >>> plot_results(results, "runs/aura/aura_replication.png")  # doctest: +SKIP
    """
    rows = results["rows"]
    names = [r["defense"] for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.4 * len(rows) + 3), 4.2))
    means = [r["toxicity_mean"] for r in rows]
    err = [[m - r["ci95"][0] for m, r in zip(means, rows)], [r["ci95"][1] - m for m, r in zip(means, rows)]]
    axes[0].bar(x, means, yerr=err, capsize=4, color="tab:red", alpha=0.8, label="mean toxicity")
    axes[0].plot(list(x), [r["toxic_share"] for r in rows], "ko", label="share > 0.5")
    tilt = {"rotation": 30, "ha": "right"} if max(map(len, names)) > 8 else {}
    axes[0].set_xticks(list(x), names, **tilt)
    axes[0].set_ylabel("toxicity of continuations")
    axes[0].legend(fontsize=8)
    ppl = [r["perplexity"] for r in rows]
    perr = [[p - r["ci95_perplexity"][0] for p, r in zip(ppl, rows)], [r["ci95_perplexity"][1] - p for p, r in zip(ppl, rows)]]
    axes[1].bar(x, ppl, yerr=perr, capsize=4, color="tab:blue", alpha=0.8)
    axes[1].set_xticks(list(x), names, **tilt)
    axes[1].set_ylabel("perplexity, held-out neutral text")
    fig.suptitle(f"AurA on {results['model']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write ``results.json``, ``report.md`` and the PNG into ``out_dir`` (each atomically).

    Example:
        >>> write_outputs(results, "runs/aura")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_results(results, out / PNG_NAME)
    _atomic_write(out / "report.md", render_report(results))
    _atomic_write(out / "results.json", json.dumps(results, indent=2))


def _rate(samples_per_s: float | None) -> str:
    """A throughput for the report; ``None`` means the continuations were reused from an earlier run.

    Example:
        >>> _rate(None)
        'reused from an earlier run (no new samples)'
    """
    return "reused from an earlier run (no new samples)" if samples_per_s is None else f"{samples_per_s} samples/s"
