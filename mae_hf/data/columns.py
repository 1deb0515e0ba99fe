"""Finding a dataset column by name, by feature type, or by a usual name."""


def find_column(dataset, name: str | None, feature_type, usual_names, flag: str, what: str) -> str:
    """`name` when given (it must exist), else the first column whose feature is a `feature_type`, else the first
    of `usual_names` present. Errors name the flag and list the columns."""
    columns = list(dataset.column_names or [])
    if name is not None:
        if name not in columns:
            raise ValueError(f"{flag} {name!r} is not a column of the dataset; columns: {columns}")
        return name
    features = dataset.features or {}
    for column in columns:
        if isinstance(features.get(column), feature_type):
            return column
    for column in usual_names:
        if column in columns:
            return column
    raise ValueError(f"the dataset has no {what} column; pass {flag} (columns: {columns})")
