"""Segmentation figures: one colour per class shared by ground truth and prediction, background uncoloured, a
legend of the classes shown."""

import numpy as np

from mae_hf.data.digits_seg import DIGITS_SEG_LABELS
from mae_hf.visualize import class_colours, classes_shown, overlay, segmentation_figure


def test_each_class_has_its_own_colour_and_background_none():
    colours = class_colours(DIGITS_SEG_LABELS)
    assert colours.shape == (11, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours[1:]}) == 10  # the ten digits: ten different colours (tab10)
    assert colours[0].max() < 40  # background: near-black
    many = class_colours([str(i) for i in range(150)])
    assert len({tuple(c) for c in many}) == 150


def test_ground_truth_and_prediction_share_the_colours_and_the_legend_lists_the_classes_shown():
    image = np.full((8, 10, 3), 200, dtype=np.uint8)
    truth = np.zeros((8, 10), dtype=np.int64)
    truth[:, 5:] = 3
    truth[0, 0] = 255
    prediction = np.zeros((8, 10), dtype=np.int64)
    prediction[:4, 5:] = 3
    prediction[4:, 5:] = 7
    colours = class_colours(DIGITS_SEG_LABELS)
    drawn_truth = overlay(image, truth, colours, {0})
    drawn_prediction = overlay(image, prediction, colours, {0})
    same = (truth == prediction) & (truth != 255)
    assert np.array_equal(drawn_truth[same], drawn_prediction[same])  # one colour per class, in both panels
    assert not np.array_equal(drawn_prediction[5, 6], drawn_truth[5, 6])  # class 7 looks different from class 3
    assert np.array_equal(drawn_truth[1, 1], drawn_prediction[1, 1])  # background: the dimmed image itself
    assert tuple(drawn_truth[0, 0]) == (128, 128, 128)  # ignored: grey
    assert classes_shown([truth], [prediction]) == [0, 3, 7]
    figure = segmentation_figure([image], [truth], [prediction], dict(enumerate(DIGITS_SEG_LABELS)), title="step 7")
    assert figure.mode == "RGB" and figure.size[0] > figure.size[1]  # three panels and a legend side by side


def text_bands(figure, rows: int = 150) -> list[tuple[int, int]]:
    """(first, last) pixel rows of each band of rows holding dark pixels (text, panels) in the figure's top part."""
    dark = (np.asarray(figure.convert("L"))[:rows] < 128).any(1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], dark.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2] - 1))


def test_title_stays_above_the_column_headings_however_many_rows():
    image = np.full((32, 32, 3), 20, dtype=np.uint8)
    labels = np.zeros((32, 32), dtype=np.int64)
    for rows in (1, 8, 12):  # at matplotlib's default title height, 8 rows ran the title into the headings
        figure = segmentation_figure(
            [image] * rows, [labels] * rows, [labels] * rows, dict(enumerate(DIGITS_SEG_LABELS)), title="step 1500"
        )
        bands = text_bands(figure)
        assert len(bands) >= 3, f"{rows} rows: title and headings run together: {bands}"
        title, headings, panels = bands[:3]
        assert title[1] < headings[0] - 5 and headings[1] < panels[0], (rows, bands)
        assert title[0] < 20  # near the top edge, not a share of the height down
