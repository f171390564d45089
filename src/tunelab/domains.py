"""Cross-domain evaluation: ``tunelab-eval ckpt_path=CKPT eval_domains=[movies,products,...]``.

Each entry of ``eval_domains`` names a corpus: a data config in ``conf/data/`` (``movies``,
``products``, ``editorials``, ``tweets``, ...) or a CSV / JSON Lines / Parquet file or folder
(read with the checkpoint's ``text_column``/``label_column``). Only the corpus changes: the
checkpoint's stored data config keeps its tokenizer, ``max_length``, batch sizes and caps, so
every domain is seen through the same preprocessing the model was trained with. Each domain's
test split (its seeded 80/10/10 split, or its own ``test.*`` file) is evaluated.

The in-domain reference is the checkpoint's own data config (with the command line's
``+data.KEY=VALUE`` overrides): the corpus plain ``tunelab-eval`` evaluates. It is always the
first row of the report, whether or not it is listed; each other domain's drop is the in-domain
metric minus the domain's (positive: worse out of domain).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from tunelab.config import config_dir
from tunelab.utils.io import atomic_write_csv, atomic_write_text

# The keys of a data config that say which corpus is read and how it is split; every other key
# (tokenizer, max_length, batch sizes, caps, folders) stays the checkpoint's.
CORPUS_KEYS = (
    "source",
    "domain",
    "path",
    "hub_name",
    "text_column",
    "label_column",
    "val_size",
    "test_size",
    "split_seed",
    "decode_errors",
)
# Corpus keys that do not change the test split (ignored when matching the in-domain corpus).
SPLIT_ONLY_KEYS = ("val_size", "decode_errors")
# Must equal the checkpoint's: the model's output units are these classes.
LABEL_KEYS = ("num_classes", "label_names")
EXAMPLE = "eval_domains=[movies,products,editorials,tweets]"


def _data_config_file(entry: str) -> Path:
    return config_dir() / "data" / f"{entry}.yaml"


def _known_configs() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))


def domain_problem(entry: Any) -> str | None:
    """Why ``entry`` cannot be an ``eval_domains`` entry (None when it can)."""
    if not isinstance(entry, str) or not entry:
        return (
            f"eval_domains entry {entry!r} must be a data config name or a data file/folder, "
            f"e.g. {EXAMPLE}"
        )
    if "/" not in entry and _data_config_file(entry).is_file():
        return None
    if Path(entry).exists():
        return None
    return (
        f"eval_domains entry {entry!r} is neither a data config in conf/data "
        f"({', '.join(_known_configs())}) nor an existing file or folder; name a config "
        f"({EXAMPLE}) or give the path of a CSV / JSON Lines / Parquet file or folder"
    )


def domain_data_config(entry: str, base: DictConfig) -> DictConfig:
    """The checkpoint's data config ``base`` reading the corpus ``entry`` instead.

    Args:
        entry: a data config name (``products``) or a data file/folder.
        base: the checkpoint's resolved data config.

    Raises:
        ValueError: ``entry`` is neither, is a different kind of data config, or has other
            classes than the checkpoint (config key ``eval_domains``).
    """
    problem = domain_problem(entry)
    if problem:
        raise ValueError(problem)
    if "/" not in entry and _data_config_file(entry).is_file():
        domain = OmegaConf.load(_data_config_file(entry))
        if domain.get("_target_") != base.get("_target_"):
            raise ValueError(
                f"eval_domains entry {entry!r} builds {domain.get('_target_')}, but the "
                f"checkpoint was trained on {base.get('_target_')}; list data configs of the "
                "same kind (text corpora for a text model)"
            )
        corpus = {k: domain[k] for k in CORPUS_KEYS if k in domain}
        for key in LABEL_KEYS:
            ours, theirs = _plain(domain.get(key)), _plain(base.get(key))
            if key in domain and ours != theirs:
                raise ValueError(
                    f"eval_domains entry {entry!r} has data.{key}={ours} but the checkpoint's "
                    f"model was trained with data.{key}={theirs}; evaluate only on corpora with "
                    "the checkpoint's classes"
                )
    else:
        corpus = {"source": "files", "path": str(Path(entry).resolve())}
    out = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    with open_dict(out):
        out.merge_with(corpus)
    return out


def _plain(value: Any) -> Any:
    """A config value as plain Python (lists of names compare as lists)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def domain_name(entry: str | None, data_cfg: DictConfig) -> str:
    """A short name for a report row: the config name, the file/folder name, or the corpus."""
    if entry is not None:
        return (
            entry if "/" not in entry and _data_config_file(entry).is_file() else _path_name(entry)
        )
    if data_cfg.get("source") == "embedded":
        return str(data_cfg.get("domain"))
    if data_cfg.get("source") == "hub":
        return str(data_cfg.get("hub_name"))
    return _path_name(str(data_cfg.get("path")))


def _path_name(path: str) -> str:
    p = Path(path)
    return p.stem if p.is_file() else p.name


def _corpus(cfg: DictConfig) -> dict[str, Any]:
    """What decides a config's test split; keys a config lacks take the class's defaults."""
    defaults = {}
    try:
        signature = inspect.signature(get_class(str(cfg.get("_target_"))))
        defaults = {n: p.default for n, p in signature.parameters.items()}
    except Exception:  # not importable: compare the keys as written
        pass
    corpus = {k: cfg.get(k, defaults.get(k)) for k in CORPUS_KEYS if k not in SPLIT_ONLY_KEYS}
    if corpus.get("path"):
        corpus["path"] = str(Path(str(corpus["path"])).resolve())
    if corpus.get("source") != "embedded":
        corpus["domain"] = None  # only the embedded source reads it
    return corpus


def plan_domains(entries: list[str], base: DictConfig) -> list[tuple[str, DictConfig | None]]:
    """The report's rows in order: ``(name, data config)``; ``None`` marks the in-domain row.

    The in-domain row (the checkpoint's own corpus, ``base``) comes first; it takes the name of
    the listed entry that reads the same corpus, if any. Repeated corpora are evaluated once.
    """
    own = _corpus(base)
    in_name = None
    others: list[tuple[str, DictConfig | None]] = []
    seen = [own]
    for entry in entries:
        cfg = domain_data_config(entry, base)
        corpus = _corpus(cfg)
        if corpus == own and in_name is None:
            in_name = domain_name(entry, cfg)
        if corpus in seen:
            continue
        seen.append(corpus)
        others.append((domain_name(entry, cfg), cfg))
    return [(in_name or domain_name(None, base), None), *others]


def evaluate_domains(
    plan: list[tuple[str, DictConfig | None]],
    model: L.LightningModule,
    trainer: L.Trainer,
    in_domain: tuple[dict[str, float], L.LightningDataModule],
) -> list[dict[str, Any]]:
    """Test ``model`` on each planned domain; return one report row per domain.

    Args:
        plan: from :func:`plan_domains`.
        model: the checkpoint's model.
        trainer: the trainer that tested the in-domain data (reused for each domain).
        in_domain: the in-domain test metrics (``{"test/acc": ...}``) and data module.

    Returns:
        Rows with ``domain``, ``in_domain``, ``n_test``, ``data_fingerprint``, each test metric
        (``acc``, ``f1``, ...) and, for metrics other than losses, ``<metric>_drop`` = in-domain
        minus this domain.
    """
    from tunelab.train import final_metrics  # the entry point's module; imported late

    measured = []
    for name, data_cfg in plan:
        if data_cfg is None:
            metrics, datamodule = in_domain
        else:
            datamodule = instantiate(data_cfg, _convert_="partial")
            metrics = final_metrics(trainer.test(model, datamodule=datamodule, verbose=False))
        n_test = len(datamodule.test_dataloader().dataset)
        measured.append((name, data_cfg is None, n_test, datamodule, metrics))
    return report_rows(
        [
            {
                "domain": name,
                "in_domain": is_in,
                "n_test": n_test,
                "data_fingerprint": getattr(dm, "fingerprint", None),
                **metrics,
            }
            for name, is_in, n_test, dm, metrics in measured
        ]
    )


def report_rows(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the drops to per-domain results; ``test/`` metric names lose their prefix.

    Args:
        measured: one dict per domain with ``in_domain`` (exactly one True) and ``test/*``
            metrics.
    """
    reference = next(m for m in measured if m["in_domain"])
    # acc, f1, precision, ... as logged; losses last.
    metrics = sorted((k for k in reference if k.startswith("test/")), key=lambda k: "loss" in k)
    rows = []
    for m in measured:
        row = {k: v for k, v in m.items() if not k.startswith("test/")}
        for key in metrics:
            short = key.removeprefix("test/")
            row[short] = m.get(key, math.nan)
        for key in metrics:
            if "loss" not in key:  # lower is better for losses: a "drop" would read backwards
                short = key.removeprefix("test/")
                row[f"{short}_drop"] = reference[key] - m.get(key, math.nan)
        rows.append(row)
    return rows


def write_domain_report(rows: list[dict[str, Any]], out_dir: Path, ckpt_path: str) -> None:
    """Write ``domain_report.csv`` (full precision) and ``domain_report.md`` into ``out_dir``."""
    columns = list(rows[0])
    out_dir = Path(out_dir)
    atomic_write_csv(
        out_dir / "domain_report.csv", columns, ([r.get(c, "") for c in columns] for r in rows)
    )

    metrics = [c for c in columns if c not in ("domain", "in_domain", "n_test", "data_fingerprint")]
    shown = [c for c in metrics if not c.endswith("_drop")]
    head = ["domain", "test examples"]
    for c in shown:
        head += [c, f"{c} drop"] if f"{c}_drop" in columns else [c]
    lines = [
        f"# Cross-domain evaluation of `{ckpt_path}`",
        "",
        "Test split of each domain; drop = in-domain minus this domain (positive: worse).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if h == "domain" else "---:" for h in head) + "|",
    ]
    for row in rows:
        name = f"{row['domain']} (in-domain)" if row["in_domain"] else row["domain"]
        cells = [name, str(row["n_test"])]
        for c in shown:
            cells.append(f"{row[c]:.4f}")
            if f"{c}_drop" in columns:
                cells.append("—" if row["in_domain"] else f"{row[f'{c}_drop']:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out_dir / "domain_report.md", "\n".join(lines) + "\n")
