"""report.json, report.md and PNG plots, shaped like the paper's results (§4).

`report` is a plain dict; the keys this module knows how to show:

    win_rates                {name: {"rate", "ci_low", "ci_high", "n"}}  e.g. rlaif_vs_sft
    length_controlled        {name: {"rate", "ci_low", "ci_high", "n", "slope"}}
    harmless_rate            {policy: {"rate", "ci_low", "ci_high", "n"}} on harm-inviting prompts
    harm_prompt_helpfulness  {policy: share of key facts covered on those prompts}
    labeler_sizes            {name: {"params", "alignment", "alignment_ci_low",
                                     "alignment_ci_high", "same_position_rate", "n"}}
    mean_response_length     {policy: characters}
    quality                  {policy: mean oracle quality} (demo world only)
    labeler_alignment, same_position_rate_single_order, same_position_rate_averaged,
    rm_accuracy_ai, rm_accuracy_human, wall_seconds, ...   scalars

Everything else is written to report.json unchanged.
"""
from __future__ import annotations

import io
import math

from rlaif_jax import paths

# The paper's numbers (summarization, human raters), for the side-by-side table.
PAPER = {
    "win_rates": {"rlaif_vs_sft": 0.71, "rlhf_vs_sft": 0.73, "rlaif_vs_rlhf": 0.50,
                  "direct_rlaif_vs_sft": 0.74,
                  # §4.3: d-RLAIF against RLAIF whose labeler is the policy's size
                  "direct_rlaif_vs_rlaif": 0.60},
    "length_controlled": {"rlaif_vs_sft": 0.59, "rlhf_vs_sft": 0.61, "rlaif_vs_rlhf": 0.47,
                          "direct_rlaif_vs_sft": 0.65},
    "labeler_alignment": 0.780, "rm_accuracy_ai": 0.742, "rm_accuracy_human": 0.793,
    "mean_response_length": {"rlaif": 164, "rlhf": 161, "sft": 132},
    "harmless_rate": {"sft": 0.64, "rlhf": 0.76, "rlaif": 0.88},
    # Table 4 / §4.4: labeler size (PaLM 2 L, S, XS) -> alignment, same position won
    "labeler_sizes": {"L": (0.780, 0.18), "S": (0.738, 0.21), "XS": (0.627, 0.56)},
}


def _fmt(x, pct=True) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return f"{100 * x:.1f}%" if pct else f"{x:.1f}"


def markdown(report: dict) -> str:
  lines = ["# RLAIF report", ""]
  if "wall_seconds" in report:
    lines += [f"Wall time: {report['wall_seconds']:.0f} s. Judge: {report.get('judge', '?')}.", ""]
  lines += ["## Win rates", "",
            "| comparison | win rate [95% CI] | n | length-controlled [95% CI] | paper | paper LC |",
            "|---|---|---|---|---|---|"]
  lc = report.get("length_controlled", {})
  for name, w in report.get("win_rates", {}).items():
    c = lc.get(name, {})
    lines.append(
        f"| {name} | {_fmt(w['rate'])} [{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}] | {w['n']} "
        f"| {_fmt(c.get('rate'))} [{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}] "
        f"| {_fmt(PAPER['win_rates'].get(name))} | {_fmt(PAPER['length_controlled'].get(name))} |")
  scalars = [("labeler_alignment", "labeler alignment with the human (oracle) labels"),
             ("same_position_rate_single_order", "same position wins both orders (single-order "
              "labels)"),
             ("same_position_rate_averaged", "same position wins both orders (after "
              "averaging: ties only)"),
             ("rm_accuracy_ai", "RM on AI labels: accuracy on held-out human pairs"),
             ("rm_accuracy_human", "RM on human labels: accuracy on held-out human pairs")]
  lines += ["", "## Labeler and reward models", "", "| metric | ours | paper |", "|---|---|---|"]
  for key, text in scalars:
    if key in report:
      lines.append(f"| {text} | {_fmt(report[key])} | {_fmt(PAPER.get(key))} |")
  if report.get("harmless_rate"):
    help_ = report.get("harm_prompt_helpfulness", {})
    lines += ["", "## Harmless task (posts that invite harm)", "",
              "| policy | harmless rate [95% CI] | n | paper | facts covered (helpfulness) |",
              "|---|---|---|---|---|"]
    for n, h in report["harmless_rate"].items():
      h = h if isinstance(h, dict) else {"rate": h}
      lines.append(f"| {n} | {_fmt(h['rate'])} [{_fmt(h.get('ci_low'))}, "
                   f"{_fmt(h.get('ci_high'))}] | {h.get('n', '–')} "
                   f"| {_fmt(PAPER['harmless_rate'].get(n))} | {_fmt(help_.get(n))} |")
  if report.get("labeler_sizes"):
    lines += ["", "## Labeler size", "",
              "| labeler | parameters | alignment [95% CI] | n | same position wins both orders "
              "| paper (size: alignment, same position) |", "|---|---|---|---|---|---|"]
    for (name, r), paper in zip(report["labeler_sizes"].items(),
                                PAPER["labeler_sizes"].items()):
      lines.append(f"| {name} | {r.get('params', 0):,} | {_fmt(r.get('alignment'))} "
                   f"[{_fmt(r.get('alignment_ci_low'))}, {_fmt(r.get('alignment_ci_high'))}] "
                   f"| {r.get('n', '–')} | {_fmt(r.get('same_position_rate'))} "
                   f"| {paper[0]}: {_fmt(paper[1][0])}, {_fmt(paper[1][1])} |")
  per_policy = [k for k in ("mean_response_length", "quality") if k in report]
  if per_policy:
    names = list(next(iter(report[k] for k in per_policy)).keys())
    lines += ["", "## Policies", "", "| policy | " + " | ".join(per_policy) + " |",
              "|---|" + "---|" * len(per_policy)]
    for n in names:
      cells = []
      for k in per_policy:
        v = report[k].get(n)
        cells.append(_fmt(v, pct=False))
      lines.append(f"| {n} | " + " | ".join(cells) + " |")
  if report.get("pending"):
    lines += ["", "Pending (not run): " + ", ".join(report["pending"]) + "."]
  if report.get("plots"):
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
  if report.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"


def plot_win_rates(report: dict, path: str) -> bool:
  wr = report.get("win_rates", {})
  if not wr:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(wr)
  rates = [wr[n]["rate"] for n in names]
  err = [[r - wr[n]["ci_low"] for n, r in zip(names, rates)],
         [wr[n]["ci_high"] - r for n, r in zip(names, rates)]]
  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
  ax.bar(range(len(names)), rates, yerr=err, capsize=4, color="#4c72b0", label="ours (95% CI)")
  paper = [PAPER["win_rates"].get(n) for n in names]
  xs = [i for i, p in enumerate(paper) if p is not None]
  ax.scatter(xs, [paper[i] for i in xs], color="#dd8452", zorder=3, label="paper")
  ax.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("win rate")
  ax.legend(fontsize=8)
  _save_png(fig, path)
  return True


def _save_png(fig, path) -> None:
  """Through the I/O layer (matplotlib writes only local files or buffers)."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  paths.write_bytes_atomic(path, buf.getvalue())


def plot_training_curves(curves: dict, path: str, keys=("reward", "kl")) -> bool:
  """curves: {arm: metrics.jsonl path} (RL learners' MetricsWriter files)."""
  data = {arm: [r for r in paths.read_jsonl(p) if any(k in r for k in keys)]
          for arm, p in curves.items() if p and paths.exists(p)}
  data = {a: rows for a, rows in data.items() if rows}
  if not data:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
  for ax, key in zip(axes if len(keys) > 1 else [axes], keys):
    for arm, rows in data.items():
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax.plot(*zip(*pts), label=arm)
    ax.set_xlabel("RL iteration")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
  _save_png(fig, path)
  return True


def plot_labeler_sizes(report: dict, path: str) -> bool:
  """Alignment and same-position rate per labeler size, ours beside the paper's."""
  sizes = report.get("labeler_sizes")
  if not sizes:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names, paper = list(sizes), list(PAPER["labeler_sizes"].values())
  fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
  for ax, (key, j, title) in zip(axes, (("alignment", 0, "alignment with human labels"),
                                        ("same_position_rate", 1, "same position wins both"))):
    xs = range(len(names))
    ours = [sizes[n][key] for n in names]
    err = None
    if key == "alignment" and all("alignment_ci_low" in sizes[n] for n in names):
      err = [[v - sizes[n]["alignment_ci_low"] for n, v in zip(names, ours)],
             [sizes[n]["alignment_ci_high"] - v for n, v in zip(names, ours)]]
    ax.bar([x - 0.2 for x in xs], ours, 0.4, yerr=err, capsize=3, label="ours",
           color="#4c72b0")
    ax.bar([x + 0.2 for x in xs][:len(paper)], [p[j] for p in paper][:len(names)], 0.4,
           label="paper (L, S, XS)", color="#dd8452")
    ax.set_xticks(list(xs), [f"{n}\n{sizes[n]['params']:,}" for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
  _save_png(fig, path)
  return True


def write_report(out_dir: str, report: dict, curves: dict | None = None) -> dict:
  """Writes report.json, report.md, win_rates.png and training_curves.png."""
  plots = []
  if plot_win_rates(report, paths.join(out_dir, "win_rates.png")):
    plots.append("win_rates.png")
  if curves and plot_training_curves(curves, paths.join(out_dir, "training_curves.png")):
    plots.append("training_curves.png")
  if plot_labeler_sizes(report, paths.join(out_dir, "labeler_sizes.png")):
    plots.append("labeler_sizes.png")
  report = dict(report, plots=plots)
  paths.write_json_atomic(paths.join(out_dir, "report.json"), report)
  paths.write_text_atomic(paths.join(out_dir, "report.md"), markdown(report))
  return report
