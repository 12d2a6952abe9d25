"""``supcon-sweep best --by-config``: configurations ranked by their mean over seeds.

The runs ``confirm`` tagged (its reruns and the sweep trials it confirmed) are grouped by their
configuration id, recomputed from each run's params and world size (so stores whose tags an
older version computed differently group the same way); configurations with fewer than two
seeds are not shown (one seed is what the plain ``best`` lists).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.reports.best import KEY_PARAMS, NOT_EVALUATED
from orchestrator.reports.confirm import seed_stats
from orchestrator.tracking import row_config_id


def group(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One entry per configuration with at least two seeds that have ``metric``: its id,
    swept params, seeds, run ids and each metric's mean, std and count over seeds."""
    runs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if metric in row["metrics"]:
            runs[row_config_id(row)].append(row)
    out = []
    for cid, members in runs.items():
        seeds = sorted({int(r["params"].get("seed", 0)) for r in members})
        if len(seeds) < 2:
            continue
        keys = sorted({k for r in members for k in r["metrics"]})
        stats = {
            k: seed_stats([r["metrics"][k] for r in members if k in r["metrics"]]) for k in keys
        }
        params = {k: members[0]["params"].get(k) for k in KEY_PARAMS if k in members[0]["params"]}
        out.append(
            {
                "config_id": cid,
                "params": params,
                "seeds": seeds,
                "run_ids": [r["run_id"] for r in members],
                "stats": stats,
            }
        )
    return out


def _cell(stats: Mapping[str, Mapping[str, float]], key: str) -> str:
    s = stats.get(key)
    if s is None:
        return NOT_EVALUATED if key.startswith("eval/") else "-"
    scale = 100 if key.endswith("/eer") else 1
    std = f" ± {scale * s['std']:.2f}" if math.isfinite(s["std"]) else ""
    n = "" if s["n"] == max(v["n"] for v in stats.values()) else f" (n={s['n']})"
    return f"{scale * s['mean']:.2f}{std}{n}" if scale == 100 else f"{s['mean']:.4g}{std}{n}"


def print_configs(configs: Sequence[Mapping[str, Any]], metric: str) -> None:
    """One line per configuration, best first: its id, swept params, seed count, the ranking
    metric and every evaluation set's EER (%) as mean ± std over seeds."""
    sets = sorted(
        {
            k
            for c in configs
            for k in c["stats"]
            if k.startswith("eval/") and k.endswith("/eer") and k.count("/") == 2
        },
        key=lambda k: (k.startswith("eval/pooled"), k),
    )
    params = [p for p in KEY_PARAMS if any(p in c["params"] for c in configs)]
    header = ["#", "config", *params, "seeds", metric, *(f"{k.split('/')[1]} %" for k in sets)]
    table = [
        [
            str(i),
            c["config_id"],
            *(str(c["params"].get(p, "-")) for p in params),
            str(len(c["seeds"])),
            _cell(c["stats"], metric),
            *(_cell(c["stats"], k) for k in sets),
        ]
        for i, c in enumerate(configs, 1)
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print("mean ± sample std over seeds; EERs in %")
