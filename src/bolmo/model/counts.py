"""Parameters per named component of a model (what `bolmo info` prints; works on the meta device)."""

from __future__ import annotations

from torch import nn

Components = list[tuple[str, tuple[str, ...]]]  # (label, state-dict name prefixes), in forward order


def parameter_counts(model: nn.Module, components: Components) -> dict[str, int]:
    """Parameters per component, plus "total"; components the model lacks (no subword embedding,
    say) are left out."""
    counts = {label: 0 for label, _ in components}
    for name, param in model.named_parameters():
        label = next((lbl for lbl, prefixes in components if name.startswith(prefixes)), "other")
        counts[label] = counts.get(label, 0) + param.numel()
    counts = {label: n for label, n in counts.items() if n}
    counts["total"] = sum(counts.values())
    return counts
