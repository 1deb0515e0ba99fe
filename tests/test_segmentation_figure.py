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
