"""Training curves: what each panel plots, and the figure the callback writes and overwrites."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from mae_hf import MAEModel
from mae_hf.curves import Panel, TrainingCurvesCallback, draw_curves, loss_panels, monitor_panels, series

HISTORY = [
    {"eval_loss": 4.0, "eval_knn_top1_cls": 0.5, "eval_knn_top1_mean": 0.4, "step": 0},
    {"loss": 3.0, "learning_rate": 1e-4, "step": 1},
    {"loss": 2.0, "learning_rate": 2e-4, "step": 2},
    {"eval_loss": 1.5, "eval_knn_top1_cls": 0.8, "eval_knn_top1_mean": 0.7, "step": 2},
    {"eval_loss": 1.4, "eval_knn_top1_cls": 0.8, "eval_knn_top1_mean": 0.7, "step": 2},  # the final evaluation
    {"train_loss": 2.5, "train_runtime": 1.0, "step": 2},
]


def test_series_keeps_one_point_per_step_and_scales():
    assert series(HISTORY, "eval_loss") == ([0, 2], [4.0, 1.4])
    assert series(HISTORY, "eval_knn_top1_cls", 100) == ([0, 2], [50.0, 80.0])
    assert series(HISTORY, "loss") == ([1, 2], [3.0, 2.0])  # not train_loss, the summary


def test_panels_plot_the_logged_values_with_labelled_axes():
    panels = loss_panels("MSE") + monitor_panels()
    figure = draw_curves(HISTORY, panels)
    axes = figure.axes
    assert [a.get_title() for a in axes] == [p.title for p in panels]
    assert all(a.get_xlabel() == "optimizer step" and a.get_ylabel() for a in axes)
    assert axes[4].get_ylabel() == "top-1 accuracy (%)" and axes[0].get_ylabel() == "MSE"
    np.testing.assert_allclose(axes[0].lines[0].get_xydata(), [[1, 3.0], [2, 2.0]])
    np.testing.assert_allclose(axes[2].lines[0].get_xydata(), [[1, 1e-4], [2, 2e-4]])
    knn = {line.get_label(): line.get_xydata().tolist() for line in axes[3].lines}
    assert knn == {"class token": [[0, 50.0], [2, 80.0]], "mean of patch tokens": [[0, 40.0], [2, 70.0]]}
    assert not axes[4].lines and axes[4].texts[0].get_text() == "not logged yet"  # no linear probe logged


def test_callback_overwrites_one_file_at_each_evaluation(tmp_path, config):
    callback = TrainingCurvesCallback([Panel("training loss", "MSE", {"loss": "train"})], str(tmp_path))
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, log_history=HISTORY[:2])
    model = MAEModel(config)
    callback.on_evaluate(None, state, None, model=model)
    first = np.asarray(Image.open(tmp_path / "training_curves.png"))
    state.log_history, state.global_step = HISTORY, 2
    callback.on_train_end(None, state, None, model=model)
    second = np.asarray(Image.open(tmp_path / "training_curves.png"))
    assert [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]
    assert first.shape == second.shape == (320, 420, 3) and not np.array_equal(first, second)
