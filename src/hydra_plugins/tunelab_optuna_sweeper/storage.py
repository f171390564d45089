"""Study storages by URL, shared by the sweeper and the trials it launches.

``sqlite:///path.db`` (or any SQLAlchemy URL) is an RDB storage; ``journal:///path.log`` is
Optuna's ``JournalStorage`` on a file, the storage Optuna recommends for several processes on a
shared file system. In both, three slashes then a relative path, four for an absolute one.

An in-memory study (``storage=null``) lives in the sweeper's process only; :func:`live_study`
lets a trial running in that same process (Hydra's basic launcher) reach it for pruning.

Hydra imports this module when it scans for plugins: Optuna is imported inside the functions.
"""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

JOURNAL_PREFIX = "journal:///"
SQLITE_PREFIX = "sqlite:///"
# Seconds an SQLite connection waits for another process's write lock (the default, 5 s, is
# short for several workers writing trials at once).
SQLITE_TIMEOUT_S = 60

_LIVE_STUDIES: dict[str, tuple[optuna.Study, optuna.storages.BaseStorage]] = {}


def normalize_storage_url(url: str | None) -> str | None:
    """The same storage with an absolute file path, so that a job's working directory is moot.

    Creates the folder that will hold an SQLite or journal file.
    """
    if url is None:
        return None
    for prefix in (JOURNAL_PREFIX, SQLITE_PREFIX):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not rest or rest.startswith(":memory:"):
                raise ValueError(
                    f"hydra.sweeper.storage={url!r} names no file; give a path, e.g. "
                    f"{prefix}optuna/study.db, or storage=null for an in-memory study"
                )
            path = Path(rest).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(path)
    return url


@functools.cache
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url`` (one per URL and process)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = normalize_storage_url(url) or url
    if url.startswith(JOURNAL_PREFIX):
        return optuna.storages.JournalStorage(JournalFileBackend(url[len(JOURNAL_PREFIX) :]))
    engine_kwargs = (
        {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    )
    return _rdb_storage(url, engine_kwargs)


def _rdb_storage(url: str, engine_kwargs: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried: processes that create a new database at the same moment race
    to create its schema, and all but one fail once (``table alembic_version already exists``).
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


def register_live_study(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Make an in-memory study (and the storage it was created with) reachable by trials run in
    this process."""
    _LIVE_STUDIES[study.study_name] = (study, storage)


def live_study(study_name: str) -> tuple[optuna.Study, optuna.storages.BaseStorage] | None:
    """The in-memory study of that name run by this process's sweeper, and its storage."""
    return _LIVE_STUDIES.get(study_name)
