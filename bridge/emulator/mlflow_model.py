"""A saved MLflow pyfunc model behind the emulator: rows in, JSON-ready predictions out.

``pulsar-bridge emulate --model PATH`` serves the user's own model where the built-in
scoring formula would answer, so the bridge can be developed against real predictions
and real schema errors before a workspace exists. mlflow, pandas and numpy are imported
here only, when a model is loaded, so the emulator itself runs without the ``mlflow``
extra.

The emulator has already turned any of the four request formats into row objects; they
become one pandas DataFrame (a row without a column leaves NaN there, as
``dataframe_records`` does in MLflow's scoring server) and go through
``PyFuncModel.predict``, which enforces the model's signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.emulator.model import Row
from bridge.emulator.state import ServedModel

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

# MLflow's scoring server says this for any failure inside predict (e.g. NaN reaching a
# scikit-learn estimator); the cause is appended here, where MLflow sends a stack trace.
_UNEXPECTED = "Encountered an unexpected error while evaluating the model"


class MlflowModelError(ValueError):
    """The model at a path cannot be loaded (not an MLflow model, or mlflow missing).

    A ValueError, like every other bad emulator option.
    """


class PyfuncPredictor:
    """``predict(rows)`` over a loaded pyfunc model; ValueError for input it rejects."""

    def __init__(self, model: PyFuncModel) -> None:
        self._model = model

    def __call__(self, rows: list[Row]) -> list[object]:
        import pandas as pd
        from mlflow.exceptions import MlflowException

        frame = pd.DataFrame.from_records(rows)
        try:
            predictions = self._model.predict(frame)
        except MlflowException as exc:  # schema enforcement: missing column, wrong type
            raise ValueError(exc.message) from exc
        except Exception as exc:  # the model's own code failed on this input
            raise ValueError(f"{_UNEXPECTED}: {type(exc).__name__}: {exc}") from exc
        return json_ready(predictions)


def json_ready(predictions: object) -> list[object]:
    """One JSON-ready value per row from what ``PyFuncModel.predict`` returned.

    Arrays and Series become lists of Python scalars (2-D arrays lists of lists), a
    DataFrame one object per row, a dict of columns one object per row.
    """
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return [_native(row) for row in predictions.to_dict(orient="records")]
    if isinstance(predictions, pd.Series | np.ndarray):
        values: list[object] = predictions.tolist()
        return values
    if isinstance(predictions, Mapping):
        columns = {str(k): json_ready(v) for k, v in predictions.items()}
        n = len(next(iter(columns.values()), []))
        return [{name: col[i] for name, col in columns.items()} for i in range(n)]
    if isinstance(predictions, list | tuple):
        return [_native(value) for value in predictions]
    raise TypeError(f"cannot serve predictions of type {type(predictions).__name__}")


def _native(value: object) -> object:
    """``value`` with numpy scalars turned into Python ones (recursively in containers)."""
    import numpy as np

    if isinstance(value, np.generic):
        native: object = value.item()
        return native
    if isinstance(value, np.ndarray):
        return _native(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_native(v) for v in value]
    return value


def model_name(path: Path, metadata: Mapping[str, Any] | None) -> str:
    """``metadata["name"]`` from the MLmodel file if set, else the model directory's name."""
    name = (metadata or {}).get("name")
    return name if isinstance(name, str) and name else path.resolve().name


def load_served_model(path: Path, version: int = 1) -> ServedModel:
    """Load the MLflow model saved at ``path`` to serve as ``<name>-<version>``.

    Raises MlflowModelError when mlflow is not installed or ``path`` holds no model.
    """
    if version < 1:
        raise ValueError("model_version must be at least 1")
    try:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise MlflowModelError(
            "serving an MLflow model needs the mlflow extra: "
            "pip install 'pulsar-serving-bridge[mlflow]'"
        ) from exc
    try:
        model = mlflow.pyfunc.load_model(str(path))
    except (MlflowException, OSError) as exc:
        raise MlflowModelError(f"cannot load an MLflow model from {path}: {exc}") from exc
    name = model_name(path, model.metadata.metadata)
    return ServedModel(name=f"{name}-{version}", predict=PyfuncPredictor(model))
