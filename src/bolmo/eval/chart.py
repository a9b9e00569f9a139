"""The CUTE bar chart: accuracy per task, one bar per model (a PNG, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bolmo.errors import BolmoError
from bolmo.eval.report import write_atomically


NO_MATPLOTLIB = "the chart needs matplotlib: pip install 'bolmo[eval]'"


def require_matplotlib() -> None:
    """Fail before an evaluation whose chart could not be drawn at its end."""
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        raise BolmoError(NO_MATPLOTLIB)


def accuracy_chart(path: Path, tasks: Sequence[str], accuracies: Mapping[str, Mapping[str, float]],
                   title: str = "CUTE accuracy") -> Path:
    """accuracies: model label -> {task: accuracy in [0, 1]}; tasks give the x-axis order."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BolmoError(NO_MATPLOTLIB) from None
    n_models = max(len(accuracies), 1)
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(tasks) * (1 + 0.3 * n_models)), 4.5))
    for m, (label, values) in enumerate(accuracies.items()):
        xs = [i + (m - (n_models - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, [100 * values.get(t, 0.0) for t in tasks], width, label=label)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), "the chart")
    finally:
        plt.close(fig)
    return path
