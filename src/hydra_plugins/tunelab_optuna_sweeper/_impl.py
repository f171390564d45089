"""The sweep loop: ask Optuna for a batch of trials, launch them through Hydra, tell the results."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ._sampler import TrialSeededSampler
from ._search_space import SearchSpace, format_value, parse_search_space
from .config import TRIAL_KEY, Direction
from .storage import normalize_storage_url, open_storage, register_live_study

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


class TunelabOptunaSweeperImpl(Sweeper):
    """See :class:`~hydra_plugins.tunelab_optuna_sweeper.config.TunelabOptunaSweeperConf`."""

    def __init__(
        self,
        direction: Direction | str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        params: DictConfig | None,
    ) -> None:
        problems = []
        if not isinstance(n_trials, int) or n_trials < 1:
            problems.append(f"hydra.sweeper.n_trials={n_trials}: give a whole number >= 1")
        if not isinstance(n_jobs, int) or n_jobs < 1:
            problems.append(f"hydra.sweeper.n_jobs={n_jobs}: give a whole number >= 1")
        if problems:
            raise ValueError("; ".join(problems))
        self.direction = direction.name if isinstance(direction, Direction) else str(direction)
        self.study_name = study_name
        self.storage_url = normalize_storage_url(storage)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        space = parse_search_space(self._params_overrides() + list(arguments))
        if not space.distributions:
            raise ValueError(
                "nothing to search: set hydra.sweeper.params (e.g. hparams_search=cnn_optuna) or "
                "give a sweep override such as 'model.optimizer.lr=tag(log, interval(1e-4, 1e-2))'"
            )
        study = self._study()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        log.info(
            "study %r (%s, %s), %d trial(s) from this process, %d at a time; searching %s",
            study.study_name,
            self.storage_url or "in memory",
            self.direction,
            self.n_trials,
            self.n_jobs,
            ", ".join(space.distributions),
        )

        mine: list[int] = []
        job_idx = 0
        while len(mine) < self.n_trials:
            batch = [
                study.ask(space.distributions)
                for _ in range(min(self.n_jobs, self.n_trials - len(mine)))
            ]
            mine += [t.number for t in batch]
            try:
                overrides = [self._trial_overrides(study, t, space) for t in batch]
                returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
            except Exception:
                # The launcher itself failed (e.g. a cluster job died): these trials are lost,
                # the sweep goes on.
                log.exception("launching trials %s failed", [t.number for t in batch])
                returns = [None] * len(batch)
            except BaseException:  # Ctrl-C, SIGTERM: leave no trial RUNNING forever
                for t in batch:
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                raise
            job_idx += len(batch)
            more = [self._tell(study, t, ret) for t, ret in zip(batch, returns, strict=True)]
            self._write_results(study, mine, sweep_dir / RESULTS_FILE)
            if not all(more):
                break

        self._log_best(study)
        state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        if not any(state[n] in (TrialState.COMPLETE, TrialState.PRUNED) for n in mine):
            from tunelab.cli import RunFault, report_and_exit

            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            errors = Counter(str(trials[n].user_attrs.get("error", "no result")) for n in mine)
            (first, count), *others = errors.most_common()
            share = "all" if count == len(mine) else f"{count} of them"
            err = RunFault(
                f"all {len(mine)} trial(s) of this sweep failed, {share} with: {first}"
                + (f" ({len(others)} other error(s) logged above)" if others else "")
                + f". Each trial's error is in its run_info.json under {sweep_dir}"
            )
            report_and_exit(err)  # one line, not Hydra's traceback (unless debugging)
            raise err

    # -- the study ---------------------------------------------------------------------------

    def _study(self) -> optuna.Study:
        if self.storage_url is None:
            storage: optuna.storages.BaseStorage = optuna.storages.InMemoryStorage()
        else:
            storage = open_storage(self.storage_url)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self._sampler(),
            pruner=self._pruner(),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ValueError(
                f"study {study.study_name!r} in {self.storage_url} was created to "
                f"{study.direction.name.lower()}, but hydra.sweeper.direction={self.direction}; "
                "use another hydra.sweeper.study_name, or the study's direction"
            )
        if self.storage_url is None:
            register_live_study(study, storage)
        return study

    def _sampler(self) -> optuna.samplers.BaseSampler | None:
        cfg = self.sampler_cfg
        if not cfg:
            return None
        seed = cfg.get("seed")
        if seed is None:
            return instantiate(cfg)
        return TrialSeededSampler(lambda s: instantiate(cfg, seed=s), int(seed))

    def _pruner(self) -> optuna.pruners.BasePruner | None:
        return instantiate(self.pruner_cfg) if self.pruner_cfg else None

    # -- trials ------------------------------------------------------------------------------

    def _params_overrides(self) -> list[str]:
        if not self.params:
            return []
        # A null value leaves the key out, so that a derived config can drop a parameter.
        return [f"{k}={v}" for k, v in self.params.items() if v is not None]

    def _trial_overrides(
        self, study: optuna.Study, trial: optuna.Trial, space: SearchSpace
    ) -> list[str]:
        info: dict[str, Any] = {"number": trial.number, "study_name": study.study_name}
        if self.storage_url is not None:
            info["storage"] = self.storage_url
        if self.pruner_cfg:
            info["pruner"] = OmegaConf.to_container(self.pruner_cfg, resolve=True)
        return [*space.overrides(trial.params), f"++{TRIAL_KEY}={format_value(info)}"]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn | None) -> bool:
        """Record a job's outcome; False when the sampler has nothing left to propose."""
        if ret is not None and ret.hydra_cfg is not None:
            run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
            if run_dir:
                trial.set_user_attr("run_dir", str(run_dir))
        state, value, error = trial_outcome(ret)
        if state == TrialState.COMPLETE:
            log.info("trial %d: %s with %s", trial.number, _fmt(value), trial.params)
        elif state == TrialState.PRUNED:
            log.info("trial %d: %s", trial.number, error)
        else:
            from tunelab.cli import describe

            known = describe(error) if isinstance(error, BaseException) else None
            text = known[0] if known else str(error)
            if isinstance(error, BaseException) and not known:
                text = f"{type(error).__name__}: {error}"
            trial.set_user_attr("error", text.strip().splitlines()[0] if text.strip() else text)
            log.warning(
                "trial %d failed (%s): %s; the sweep goes on",
                trial.number,
                trial.params,
                text,
                # A user error or a known fault is its message; a bug keeps its traceback.
                exc_info=error if isinstance(error, BaseException) and not known else None,
            )
        try:
            study.tell(trial, value, state=state)
        except RuntimeError as err:
            # A grid or brute-force sampler that has tried everything calls study.stop(), which
            # Optuna allows only inside study.optimize; the trial is recorded all the same.
            if "Study.stop" not in str(err):
                raise
            log.info("the sampler has tried every combination of the search space")
            return False
        return True

    # -- results -----------------------------------------------------------------------------

    def _write_results(self, study: optuna.Study, mine: Sequence[int], path: Path) -> None:
        trials = study.get_trials(deepcopy=False)
        best = _best_trial(study)
        by_number = {t.number: t for t in trials}
        results: dict[str, Any] = {
            "study_name": study.study_name,
            "storage": self.storage_url,
            "direction": self.direction,
            "metric": self.config.get("optimized_metric") if self.config else None,
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "best_run_dir": best.user_attrs.get("run_dir") if best else None,
            "trials_by_state": _counts(trials),
            "this_sweep": {
                "trials_by_state": _counts([by_number[n] for n in mine if n in by_number]),
                "trials": [_trial_summary(by_number[n]) for n in mine if n in by_number],
            },
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(results, sort_keys=False))
        os.replace(tmp, path)

    def _log_best(self, study: optuna.Study) -> None:
        best = _best_trial(study)
        if best is None:
            log.warning("study %r has no completed trial", study.study_name)
            return
        metric = (self.config.get("optimized_metric") if self.config else None) or "value"
        log.info(
            "best trial #%d of study %r: %s=%s with %s (run dir %s)",
            best.number,
            study.study_name,
            metric,
            _fmt(best.value),
            best.params,
            best.user_attrs.get("run_dir"),
        )


def trial_outcome(ret: JobReturn | None) -> tuple[TrialState, float | None, Any]:
    """A job's result as ``(state, value, error)``.

    The job raised ``optuna.TrialPruned`` -> PRUNED; it raised anything else, returned nothing,
    or returned something that is not a finite number -> FAIL.
    """
    if ret is None:
        return TrialState.FAIL, None, "the launcher returned no result"
    if ret.status == JobStatus.FAILED:
        # The job's exception. Read directly: JobReturn.return_value would re-raise it and print
        # "Error executing job", which a pruned trial is not.
        err = ret._return_value
        return (TrialState.PRUNED if _pruned(err) else TrialState.FAIL), None, err
    try:
        value = ret.return_value
    except Exception as err:  # status UNKNOWN: a launcher that never ran the job
        return TrialState.FAIL, None, err
    if value is None:
        return (
            TrialState.FAIL,
            None,
            "the task returned None (is optimized_metric among the run's metrics?)",
        )
    try:
        value = float(value)
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"the task returned {value!r}, not a number"
    if math.isnan(value):
        return TrialState.FAIL, None, "the task returned NaN"
    return TrialState.COMPLETE, value, None


def _pruned(err: BaseException | None) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, optuna.TrialPruned):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {s: counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL")} | {
        s: c for s, c in counts.items() if s not in ("COMPLETE", "PRUNED", "FAIL")
    }


def _trial_summary(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": dict(t.params),
        "run_dir": t.user_attrs.get("run_dir"),
    }


def _fmt(value: float | None) -> str:
    return "None" if value is None else f"{value:.6g}"
