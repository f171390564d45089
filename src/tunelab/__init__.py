"""tunelab: Hydra-configured experiments on PyTorch Lightning."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict"]


def load_model(*args, **kwargs):  # noqa: D103 - thin lazy re-export, documented below
    from tunelab.loading import load_model as _load_model

    return _load_model(*args, **kwargs)


def predict(*args, **kwargs):  # noqa: D103 - thin lazy re-export, documented in tunelab.predict
    from tunelab.predict import predict as _predict

    return _predict(*args, **kwargs)


predict.__doc__ = "See :func:`tunelab.predict.predict`."
load_model.__doc__ = "See :func:`tunelab.loading.load_model`."
