"""Eval outputs: the JSON result, a text table and a PNG report.

The PNG (matplotlib, Agg backend) holds the account-level precision-recall
curves of the core per scenario and level, and an alert timeline (alerts per
hour of event time naming fraud vs benign accounts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stream.fraud.evaluate import mean_pr_auc


def write_json(result: dict, path: Path | str) -> None:
    """Write ``result`` without its private plotting keys."""
    Path(path).write_text(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2))


def table(result: dict) -> str:
    """Markdown table: per scenario/level, core figures and baseline PR-AUCs."""
    core = result["core"]["per_scenario"]
    bl = result.get("baselines", {})
    names = list(bl)
    head = ("| scenario | accts | PR-AUC acct | PR-AUC event | precision | recall | TTD median (min) | TTD p90 (min) | "
            + " | ".join(f"{n} PR-AUC" for n in names) + " |")
    lines = [head, "|" + "---|" * (8 + len(names))]

    def f(v, p=3):
        return "-" if v is None else f"{v:.{p}f}"

    for g in sorted(core):
        r = core[g]
        lines.append(f"| {g} | {r['accounts']} | {f(r['pr_auc_account'])} | {f(r.get('pr_auc_event'))} | "
                     f"{f(r['precision'])} | {f(r['recall'])} | {f(r['ttd_median_min'], 1)} | {f(r['ttd_p90_min'], 1)} | "
                     + " | ".join(f(bl[n]["per_scenario"].get(g, {}).get("pr_auc_account")) for n in names) + " |")
    lines.append("")
    lines.append(f"- mean account PR-AUC over L1+L2: core {f(mean_pr_auc(core))}; "
                 + "; ".join(f"{n} {f(mean_pr_auc(bl[n]['per_scenario']))}" for n in names))
    lines.append(f"- false alerts per 1,000 benign accounts per day: core "
                 f"{result['core']['false_alerts_per_1000_benign_per_day']:.2f}; "
                 + "; ".join(f"{n} {bl[n]['false_alerts_per_1000_benign_per_day']:.2f}" for n in names))
    runs = [("core", result["core"])] + [(n, bl[n]) for n in names]
    lines.append("- time to detect over every fraud account: median (detected accounts), share alerted within "
                 "15 min: " + "; ".join(f"{n} {f(r.get('ttd_median_min_all'), 1)} min, "
                                        f"{f(r.get('detected_within_15_min'), 2)}" for n, r in runs))
    thr = result.get("thresholds")
    if thr:
        cal = thr.get("calibration")
        how = (f"calibrated: {cal['budget_per_1000_per_day']} false alerts per 1,000 accounts per day on a clean "
               f"stream of {cal['accounts']:,} accounts x {cal['days']:.1f} days") if cal else "fixed defaults"
        lines.append(f"- alert thresholds (nats): account {thr['account']:.2f}, catalog {thr['catalog']:.2f} ({how})")
    lines.append(f"- hard negatives flagged: " + ", ".join(
        f"{k} {v['flagged']}/{v['accounts']}" for k, v in result.get("hard_negatives", {}).items()))
    lines.append(f"- events {result['events']:,}, accounts {result['accounts']:,}, days {result['days']:.1f}, "
                 f"fraud share: events {result['fraud_event_share']:.3f}, accounts {result['fraud_account_share']:.3f}; "
                 f"core {result['core']['events_per_second']:,.0f} events/s in eval")
    return "\n".join(lines)


def write_png(result: dict, path: Path | str) -> None:
    """PR curves (core, per scenario/level) and the alert timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    for g, (pos, neg) in sorted(result.get("_curves", {}).items()):
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        p, r, _ = precision_recall_curve(y, np.r_[pos, neg])
        ax1.plot(r, p, lw=1, label=g, ls={"L0": "-", "L1": "--", "L2": ":"}.get(g.split(":")[-1], "-"))
    ax1.set_xlabel("recall")
    ax1.set_ylabel("precision")
    ax1.set_title("account-level precision-recall (core)")
    ax1.legend(fontsize=6, ncol=2)
    al = result.get("_timeline", {}).get("alerts", [])
    if al:
        t = np.array([x[0] for x in al])
        fr = np.array([x[1] for x in al])
        t0 = t.min()
        bins = np.arange(0, (t.max() - t0) / 3600 + 2)
        ax2.hist([(t[fr] - t0) / 3600, (t[~fr] - t0) / 3600], bins=bins, stacked=True,
                 label=["names fraud account", "names benign account"], color=["tab:red", "tab:blue"])
        ax2.legend()
    ax2.set_xlabel("event time (hours from first alert)")
    ax2.set_ylabel("alerts per hour")
    ax2.set_title("alert timeline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
