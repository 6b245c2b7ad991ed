"""The benchmarks' shared chart: grouped bars, one group per workload, one bar per series."""

from __future__ import annotations

from pathlib import Path


def grouped_bars(
    path: Path,
    groups: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    title: str,
    log_scale: bool = False,
) -> None:
    """A PNG at `path`: for each group, one bar per series (`series[label][i]` for group i)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series.items()):
        offsets = [i + (index - (len(series) - 1) / 2) * width for i in range(len(groups))]
        axis.bar(offsets, values, width, label=label)
    axis.set_xticks(range(len(groups)), groups, rotation=10, fontsize=8)
    if log_scale:
        axis.set_yscale("log")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
