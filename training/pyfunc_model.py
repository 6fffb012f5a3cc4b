"""The engine's MLflow pyfunc, logged as *models from code*.

MLflow copies this file into every logged model and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``): it ends with
``mlflow.models.set_model(...)``, so nothing is pickled. The fitted parts travel as the
``engine_model`` artifact, the folder written by :meth:`training.EngineModel.save` (JSON and
the ranker's own pickle-free files), so the model loads with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.

Input: a pandas DataFrame with ``kind``, ``candidate_id`` and every column of
:data:`features.FEATURE_NAMES` (the frame :func:`features.build_features` returns, see
:func:`training.to_pyfunc_input`). Output: a DataFrame with ``candidate_id`` and
``p_success``, one row per input row, in the same order. Scoring needs no database.

Do not import this module from the package: importing it registers the model with MLflow.
It is logged by :func:`training.log_engine_model`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from training._pipeline import EngineModel


class EngineModelPyfunc(PythonModel):
    """Scores a feature frame with the :class:`~training.EngineModel` of the artifact."""

    engine: EngineModel | None = None

    def load_context(self, context: Any) -> None:
        self.engine = EngineModel.load(context.artifacts["engine_model"])

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        if self.engine is None:
            raise RuntimeError("the engine model is not loaded (load_context was not called)")
        p = np.asarray(self.engine.ranker.predict_proba(model_input), dtype=np.float64)
        return pd.DataFrame({"candidate_id": model_input["candidate_id"].astype(str).to_numpy(),
                             "p_success": p})


mlflow.models.set_model(EngineModelPyfunc())
