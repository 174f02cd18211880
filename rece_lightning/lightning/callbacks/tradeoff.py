"""The erasure/preservation trade-off of a run as TensorBoard figures: one point per stage, the kept stage marked.

RECE is a trade-off: the concept must go and everything else must stay. For each configured pair
``[erasure metric, preservation metric]`` this callback draws, after every stage, a scatter plot (TensorBoard's
"Images" tab, tag ``tradeoff/<pair>``): the erasure metric on the x axis, the preservation metric (or a distance such
as FD, or CLIP score) on the y axis, one labelled point per stage (``original``, ``uce``, ``rece-1`` …) joined in
stage order, the kept stage ringed; the same numbers as a Markdown table in the "Text" tab (``tradeoff/<pair>/stages``). Rates are shown in %, other metrics in their own units; each axis says which way
is better. The step of each figure is the stage's epoch, so the slider replays the run.

The stages' numbers are read back from ``eval/<stage>/*.json`` (:func:`~rece_lightning.lightning.run_results.stage_metrics`),
the kept stage from the module (:func:`~rece_lightning.lightning.run_results.kept_stage`), which decides it at the end of
each stage: the figure of a stage is therefore drawn when the next stage starts, and the last one at the end of fit.

The same pairs are also registered as a "Custom Scalars" layout (both curves over the stages on one chart).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from rece_lightning.lightning.callbacks.run import run_dir
from rece_lightning.lightning.run_results import (
    better_direction,
    is_fraction,
    kept_stage,
    markdown_table,
    stage_metrics,
)

__all__ = ["TradeoffLayout", "tradeoff_figure"]


def _axis_label(metric: str) -> str:
    arrow = "↓" if better_direction(metric) == "lower" else "↑"
    unit = " (%)" if is_fraction(metric) else ""
    return f"{metric}{unit}   {arrow} better"


_AXES_PX = (520.0, 370.0)  # the axes' size in the figure, in pixels (close enough to place labels)
_OFFSETS = ((10, 0), (-10, 0), (10, 14), (10, -14), (-10, 14), (-10, -14), (10, 28), (10, -28))  # points


def _limits(values: Sequence[float], scale: float) -> tuple[float, float]:
    """Axis limits with room for the labels; a rate (``scale`` 100) stays near its 0-100 % range (its ticks
    within it, see :func:`tradeoff_figure`)."""
    low, high = min(values), max(values)
    pad = max(0.12 * (high - low), 3.0 if scale == 100.0 else 0.05 * max(abs(high), 1e-9))
    lower, upper = low - pad, high + pad
    return (max(lower, -4.0), min(upper, 104.0)) if scale == 100.0 else (lower, upper)


def _place_labels(places: Mapping[tuple[float, float], list[str]], limits: Sequence[tuple[float, float]]):
    """A label offset for each position, chosen greedily so that labels overlap neither each other nor the
    points (boxes estimated in pixels from the text length: 7.5 px per character, 16 px high)."""
    def pixel(x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = limits
        return (x - x0) / (x1 - x0 or 1) * _AXES_PX[0], (y - y0) / (y1 - y0 or 1) * _AXES_PX[1]

    dots = [pixel(x, y) for x, y in places]
    boxes: list[tuple[float, float, float, float]] = [(px - 6, py - 6, px + 6, py + 6) for px, py in dots]
    placed = []
    for (x, y), names in places.items():
        px, py = pixel(x, y)
        width = 7.5 * len(", ".join(names))

        def box(dx: float, dy: float, px: float = px, py: float = py, width: float = width):
            left = px + dx * 1.39 if dx >= 0 else px + dx * 1.39 - width  # points -> pixels at 100 dpi
            return left, py + dy * 1.39 - 8, left + width, py + dy * 1.39 + 8

        def overlap(b: tuple[float, float, float, float]) -> float:
            outside = max(0.0, b[2] - _AXES_PX[0] - 40) + max(0.0, -b[0] - 40)
            return outside + sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                                 for o in boxes)

        dx, dy = min(_OFFSETS, key=lambda d: (overlap(box(*d)), _OFFSETS.index(d)))
        boxes.append(box(dx, dy))
        placed.append(((x, y), names, (dx, dy)))
    return placed


def tradeoff_figure(
    points: Sequence[tuple[str, float, float]], x_metric: str, y_metric: str, kept: str | None = None,
    title: str | None = None,
):
    """A matplotlib figure of ``points`` (``(stage, x, y)`` in stage order; fractions given in ``[0, 1]``).

    Rates (:func:`~rece_lightning.lightning.run_results.is_fraction`) are drawn in % on a 0–100 axis (with a margin);
    other metrics on their own scale. The ``kept`` stage is ringed and labelled ``(kept)``.
    """
    from matplotlib import colormaps  # lazily: importing rece_lightning stays light
    from matplotlib.figure import Figure

    scale_x, scale_y = (100.0 if is_fraction(m) else 1.0 for m in (x_metric, y_metric))
    xs = [x * scale_x for _, x, _ in points]
    ys = [y * scale_y for _, _, y in points]
    figure = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")  # TensorBoard shows it at about half size
    ax = figure.add_subplot()
    ax.plot(xs, ys, color="0.7", linewidth=1, zorder=1, clip_on=False)
    cmap = colormaps["viridis"]
    colours = [cmap(i / max(len(points) - 1, 1)) for i in range(len(points))]
    ax.scatter(xs, ys, c=colours, s=80, zorder=2, edgecolors="black", linewidths=0.6, clip_on=False)
    # one label per position: stages that landed on the same point share it
    places: dict[tuple[float, float], list[str]] = {}
    for (stage, _, _), x, y in zip(points, xs, ys, strict=True):
        places.setdefault((round(x, 9), round(y, 9)), []).append(f"{stage} (kept)" if stage == kept else stage)
    limits = [_limits(values, scale) for values, scale in ((xs, scale_x), (ys, scale_y))]
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    for scale, axis in ((scale_x, ax.xaxis), (scale_y, ax.yaxis)):
        if scale == 100.0:  # no tick beyond 0-100 %
            axis.set_ticks([t for t in axis.get_ticklocs() if 0.0 <= t <= 100.0])
    for (x, y), names, (dx, dy) in _place_labels(places, limits):
        text = ", ".join(names)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", annotation_clip=False, fontsize=13,
                    ha="left" if dx >= 0 else "right", va="center",
                    fontweight="bold" if "(kept)" in text else "normal")
    for (stage, _, _), x, y in zip(points, xs, ys, strict=True):
        if stage == kept:
            ax.scatter([x], [y], s=400, facecolors="none", edgecolors="crimson", linewidths=2.5, zorder=3,
                       clip_on=False, label="kept")
    ax.set_xlabel(_axis_label(x_metric), fontsize=12)
    ax.set_ylabel(_axis_label(y_metric), fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(True, alpha=0.3)
    corner_x = 0.02 if better_direction(x_metric) == "lower" else 0.98
    corner_y = 0.97 if better_direction(y_metric) == "higher" else 0.03
    arrow = {(0.02, 0.97): "↖", (0.98, 0.97): "↗", (0.02, 0.03): "↙", (0.98, 0.03): "↘"}[(corner_x, corner_y)]
    ax.text(corner_x, corner_y, f"{arrow} better", transform=ax.transAxes, fontsize=12, color="0.35",
            ha="left" if corner_x < 0.5 else "right", va="top" if corner_y > 0.5 else "bottom")
    if title:
        ax.set_title(title, fontsize=14)
    return figure


def _slug(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^0-9A-Za-z]+", "_", ascii_title).strip("_").lower() or "pair"


class TradeoffLayout(L.Callback):
    """Trade-off figures (see the module docstring) and a Custom Scalars layout of the given metric pairs.

    Args:
        pairs: chart title → ``[erasure metric, preservation metric]``, e.g.
            ``{"concept rate vs preservation": ["val/concept_rate", "val/preservation"]}``; more names are drawn in
            the Custom Scalars chart only.
        category: the Custom Scalars section title.
        figures: draw the trade-off figures (the "Images" tab, tags ``tradeoff/<title>``).
    """

    def __init__(self, pairs: dict[str, list[str]], category: str = "erasure vs preservation",
                 figures: bool = True) -> None:
        self.pairs, self.category, self.figures = pairs, category, figures
        self._pending = False
        self.last_points: dict[str, list[tuple[str, float, float]]] = {}  # by figure tag, as last drawn
        self.last_kept: str | None = None

    def layout(self) -> dict[str, dict[str, list]]:
        """The ``SummaryWriter.add_custom_scalars`` layout: one multiline chart per pair (tags as regexes)."""
        return {self.category: {title: ["Multiline", [f"^{t}$" for t in tags]] for title, tags in self.pairs.items()}}

    def tags(self) -> dict[str, str]:
        """Figure tag of each pair's title: ``tradeoff/<title in snake case>``."""
        return {title: f"tradeoff/{_slug(title)}" for title in self.pairs}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_custom_scalars"):
            experiment.add_custom_scalars(self.layout())

    def points(self, metrics: Mapping[str, Mapping[str, float]], x: str, y: str) -> list[tuple[str, float, float]]:
        """``(stage, x, y)`` of the stages that logged both metrics."""
        return [(stage, m[x], m[y]) for stage, m in metrics.items() if x in m and y in m]

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Log one figure per pair with the stages done so far (global rank zero; returns the figures by tag)."""
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if not trainer.is_global_zero or not self.figures or not hasattr(experiment, "add_figure"):
            return {}
        metrics = stage_metrics(run_dir(trainer), getattr(pl_module, "stages", None))
        kept = kept_stage(pl_module)
        step = max(len(metrics) - 1, 0)
        drawn: dict[str, Any] = {}
        for title, tag in self.tags().items():
            names = self.pairs[title]
            if len(names) < 2:
                continue
            points = self.points(metrics, names[0], names[1])
            if points:
                figure = tradeoff_figure(points, names[0], names[1], kept, title)
                experiment.add_figure(tag, figure, global_step=step, close=True)
                experiment.add_text(f"{tag}/stages", self.table(points, names[0], names[1], kept), global_step=step)
                drawn[tag] = figure
                self.last_points[tag] = points
        self.last_kept = kept
        return drawn

    @staticmethod
    def table(points: Sequence[tuple[str, float, float]], x: str, y: str, kept: str | None) -> str:
        """The figure's numbers as a Markdown table (TensorBoard's "Text" tab), rates in %."""

        def shown(metric: str, value: float) -> str:
            return f"{100 * value:.1f} %" if is_fraction(metric) else f"{value:.4g}"

        rows = [(f"**{stage}** (kept)" if stage == kept else stage, shown(x, vx), shown(y, vy))
                for stage, vx, vy in points]
        return markdown_table(["stage", f"`{x}`", f"`{y}`"], rows)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = True  # drawn once the module has decided the kept stage (its hook runs after this one)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:
            self._pending = False
            self.draw(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)
