"""Finding a dataset's columns (image, class label, segmentation annotation): by name, by feature type, or by a
usual name. Every script and the monitor find their columns here."""

from datasets import ClassLabel, Image

IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values", "jpg", "png")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label")
ANNOTATION_COLUMN_NAMES = ("annotation", "label", "segmentation_map", "mask")


def find_column(dataset, name: str | None, feature_type, usual_names, flag: str, what: str, exclude=()) -> str:
    """`name` when given (it must exist), else the first column whose feature is a `feature_type` (skipped when
    None), else the first of `usual_names` present; columns in `exclude` are never chosen. Errors name the flag and
    list the columns."""
    columns = [column for column in dataset.column_names or [] if column not in exclude]
    if name is not None:
        if name not in columns:
            raise ValueError(f"{flag} {name!r} is not a column of the dataset; columns: {columns}")
        return name
    features = dataset.features or {}
    if feature_type is not None:
        for column in columns:
            if isinstance(features.get(column), feature_type):
                return column
    for column in usual_names:
        if column in columns:
            return column
    raise ValueError(f"the dataset has no {what} column; pass {flag} (columns: {columns})")


def find_image_column(dataset, name: str | None = None) -> str:
    """The image column: `name` when given, else the first `datasets.Image` feature, else a usual name."""
    return find_column(dataset, name, Image, IMAGE_COLUMN_NAMES, "--image_column_name", "image")


def find_label_column(dataset, name: str | None = None) -> str:
    """The label column: `name` when given, else the first `ClassLabel` feature, else a usual name."""
    return find_column(dataset, name, ClassLabel, LABEL_COLUMN_NAMES, "--label_column_name", "label")


def find_segmentation_columns(dataset, image_column: str | None = None, annotation_column: str | None = None):
    """(image column, annotation column): the given names (they must exist), else for the annotation a usual name
    (it is a `datasets.Image` too, so its type cannot tell it apart) and for the image the first other
    `datasets.Image` feature, else a usual name. Both must be `datasets.Image` columns. Errors list the columns."""
    annotation = find_column(
        dataset, annotation_column, None, ANNOTATION_COLUMN_NAMES, "--annotation_column_name", "annotation"
    )
    image = find_column(
        dataset, image_column, Image, IMAGE_COLUMN_NAMES, "--image_column_name", "image", exclude=(annotation,)
    )
    for column, flag in ((image, "--image_column_name"), (annotation, "--annotation_column_name")):
        feature = (dataset.features or {}).get(column)
        if feature is not None and not isinstance(feature, Image):
            raise ValueError(
                f"column {column!r} holds {feature}, not images; pass {flag} (columns: {list(dataset.column_names)})"
            )
    return image, annotation
