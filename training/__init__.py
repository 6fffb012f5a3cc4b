"""Outcomes -> training set -> fit -> evaluate -> MLflow."""

from training._pipeline import EngineModel, fit_engine_model, training_rows

__all__ = ["EngineModel", "fit_engine_model", "training_rows"]
