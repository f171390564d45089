"""``tunelab-reproduce RUN_DIR``: re-run a run from its record and compare the final metrics.

The new run uses the run's recorded composed config (``RUN_DIR/.hydra/config.yaml``) as its
whole config, so later changes to the config files' defaults cannot change what is re-run. It
writes to a new directory beside the original and exits 0 only if every recorded metric matches.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tunelab.config import new_run_dir
from tunelab.utils.run_record import code_version


def _load(run_dir: Path) -> tuple[dict, dict]:
    """The run's record and metrics, after checking that its three record files are readable."""
    info_path, metrics_path = run_dir / "run_info.json", run_dir / "metrics.json"
    config_path = run_dir / ".hydra" / "config.yaml"
    for p in (info_path, metrics_path, config_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: tunelab-reproduce needs a finished tunelab run directory"
            )
    damaged = "the run's record is damaged, so it cannot be re-run as recorded (restore the file "
    damaged += "from a copy of the run)"
    try:
        config = OmegaConf.load(config_path)
    except Exception as err:  # YAML, encoding
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"{config_path} cannot be read ({type(err).__name__}: {first}); {damaged}"
        ) from None
    if not isinstance(config, DictConfig):
        raise ValueError(f"{config_path} holds no config mapping; {damaged}")
    return _json_object(info_path, damaged), _json_object(metrics_path, damaged)


def _json_object(path: Path, damaged: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({err}); {damaged}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {damaged}")
    return value


def compare(recorded: dict, new: dict, tolerance: float) -> list[tuple[str, float, float, bool]]:
    """``(metric, recorded, new, matches)`` for every numeric recorded metric."""
    rows = []
    for key, old in sorted(recorded.items()):
        if not isinstance(old, (int, float)):
            continue
        value = new.get(key, math.nan)
        rows.append((key, old, value, abs(value - old) <= tolerance))
    return rows


def reproduce(run_dir: Path, tolerance: float = 0.0) -> tuple[Path, list]:
    """Re-run ``run_dir``; return the new run directory and the comparison rows."""
    run_dir = run_dir.resolve()
    info, recorded = _load(run_dir)
    target = Path(new_run_dir(str(run_dir.parent)))
    cmd = [
        sys.executable, "-m", "tunelab.train",
        f"--config-path={run_dir / '.hydra'}", "--config-name=config",
        f"hydra.run.dir={target}", "resume=null", "ckpt_path=null",
    ]  # fmt: skip
    print(f"reproducing {run_dir}\n  into {target}", file=sys.stderr)
    now = code_version(Path(__file__).resolve().parent)
    then = info.get("code", {})
    if then.get("git") and (now.get("git") != then.get("git") or then.get("dirty")):
        print(
            f"  note: recorded code {then.get('git')} (dirty={then.get('dirty')}), "
            f"current {now.get('git')} (dirty={now.get('dirty')})",
            file=sys.stderr,
        )
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError:
        if not any(target.iterdir()):  # the re-run failed before writing: leave no empty folder
            target.rmdir()
        raise
    new = json.loads((target / "metrics.json").read_text())
    return target, compare(recorded, new, tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunelab-reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument(
        "--tolerance", type=float, default=0.0,
        help="largest accepted absolute difference per metric (default 0: exact)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        target, rows = reproduce(args.run_dir, args.tolerance)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:  # the re-run printed its own error line
        print(f"tunelab-reproduce: the re-run failed (exit code {err.returncode})", file=sys.stderr)
        return err.returncode
    width = max(len(r[0]) for r in rows)
    for key, old, new, ok in rows:
        print(f"{key:<{width}}  {old:.6f}  {new:.6f}  {'ok' if ok else 'DIFFERS'}")
    matched = all(r[3] for r in rows)
    print(f"{'match' if matched else 'MISMATCH'}: {target}")
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
