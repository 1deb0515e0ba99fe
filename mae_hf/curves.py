"""Training curves: training loss, evaluation loss, learning rate and a script's evaluation metrics against the
optimizer step, one panel each, in `training_curves.png` in the output folder (redrawn, overwritten, at every
evaluation and at the end of training) and in wandb (`eval/training_curves`) when a run is active. One callback
serves the three scripts; each names its panels."""

from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .figure_callbacks import FigureCallback
from .visualize import figure_image


@dataclass(frozen=True)
class Panel:
    """One plot: `lines` maps `trainer.state.log_history` keys to legend labels; values are multiplied by `scale`
    (100 for shares in [0, 1] shown in %)."""

    title: str
    ylabel: str
    lines: dict = field(default_factory=dict)
    scale: float = 1.0


def loss_panels(loss: str) -> list[Panel]:
    """Training loss and evaluation loss (`loss` says what they are, e.g. "cross-entropy"), learning rate."""
    return [
        Panel("training loss", loss, {"loss": "train"}),
        Panel("evaluation loss", loss, {"eval_loss": "eval"}),
        Panel("learning rate", "learning rate", {"learning_rate": "lr"}),
    ]


def percent_panel(title: str, ylabel: str, lines: dict) -> Panel:
    return Panel(title, f"{ylabel} (%)", lines, scale=100.0)


def monitor_panels() -> list[Panel]:
    """The feature monitor's accuracies (`mae_hf.monitor`): k-NN and linear probe, class token and mean pooling."""
    poolings = {"cls": "class token", "mean": "mean of patch tokens"}
    return [
        percent_panel("k-NN top-1 (monitor)", "top-1 accuracy", {f"eval_knn_top1_{p}": n for p, n in poolings.items()}),
        percent_panel(
            "linear-probe top-1 (monitor)", "top-1 accuracy", {f"eval_linear_top1_{p}": n for p, n in poolings.items()}
        ),
    ]


def series(log_history: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, one point per step (the last logged: the final evaluation repeats the last one)."""
    points = {entry["step"]: entry[key] * scale for entry in log_history if key in entry and "step" in entry}
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def draw_curves(log_history: list[dict], panels: list[Panel], columns: int = 3) -> Figure:
    """A matplotlib Figure (no pyplot state) with one axes per panel; a panel with nothing logged yet says so."""
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), dpi=100, layout="constrained")
    last_step = max((entry.get("step", 0) for entry in log_history), default=0)  # one step axis for all panels
    for position, panel in enumerate(panels, start=1):
        axes = figure.add_subplot(rows, columns, position)
        drawn = 0
        for key, label in panel.lines.items():
            steps, values = series(log_history, key, panel.scale)
            if steps:
                axes.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=label)
                drawn += 1
        if not drawn:
            axes.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=axes.transAxes, color="grey")
        elif len(panel.lines) > 1:
            axes.legend(fontsize="small")
        axes.set_title(panel.title)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel(panel.ylabel, fontsize="small")
        axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        axes.set_xlim(0, max(1, last_step) * 1.02)
        axes.grid(alpha=0.3)
    return figure


class TrainingCurvesCallback(FigureCallback):
    """`training_curves.png` (and wandb `eval/training_curves`), redrawn from the Trainer's log history at every
    evaluation and at the end of training, on the main process."""

    final, wandb_key = "training_curves.png", "eval/training_curves"
    runs_model = False  # drawn from the log history: the main process alone

    def __init__(self, panels: list[Panel], output_dir: str):
        super().__init__(output_dir)
        self.panels, self.log_history = panels, []

    def draw(self, model, step: int) -> Image.Image:
        return figure_image(draw_curves(self.log_history, self.panels))

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.on_train_end(args, state, control, model=model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.log_history = state.log_history
        super().on_train_end(args, state, control, model=model)
