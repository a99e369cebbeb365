"""Checkpoints of a local-engine run, and what ``run.py --resume <run-dir>`` needs to continue it.

A checkpoint is the whole engine state after a batch: the coordinator (portfolio, open round
trips, signals' carried state, sequence numbers, marks), every symbol's executor (books, fill
model RNG, consumed liquidity, pending trades), the KPI accumulator, the validator, and the
position in the input (batches done, trade-log rows written). It is one pickle, written to
``<run-dir>/checkpoint.pkl`` atomically (a temporary file, then a rename), so a crash at any
moment leaves the previous checkpoint or the new one, never half of one.

Resuming rebuilds the data source from the run folder (``settings.json``, ``run.json``), skips
the batches the checkpoint has done, cuts the trade log back to the rows it had written (a row
written after it, or by the settling of an interrupted run, is written again, identically, as
the run goes on) and continues. For mock and replay data the resumed run's trade log and KPIs
equal the uninterrupted run's; live data cannot be replayed, so it is not resumable.

A checkpoint is a pickle: resume only run folders you made (unpickling runs code).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from common.engine.storage import write_atomically

CHECKPOINT = "checkpoint.pkl"
FORMAT = 1


class CheckpointError(ValueError):
    """A run folder that cannot be resumed (one line for the user)."""


def save_checkpoint(run_dir: str | Path, state: dict) -> int:
    """Write ``state`` (the engine's objects and its position) atomically; returns its size."""
    data = pickle.dumps({"format": FORMAT, **state}, protocol=pickle.HIGHEST_PROTOCOL)
    write_atomically(Path(run_dir) / CHECKPOINT, data, durable=True)
    return len(data)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of a run folder. Raises ``CheckpointError``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT} (only runs of the local engine on mock "
                              "or replay data write checkpoints, every CHECKPOINT_INTERVAL_S)")
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in any way unpickling it
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a checkpoint of another version (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'}, "
                              f"this one reads {FORMAT})")
    return state


def resume_plan(run_dir: str | Path) -> dict:
    """What a resume needs from the run folder: ``run_id``, ``log_dir``, the effective
    ``settings`` (a dict), the data ``kind``, ``replay_path``, ``duration_s``, ``top_n`` and
    ``started_utc``. Raises ``CheckpointError`` with one line for a folder it cannot resume."""
    d = Path(run_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a run folder (no such directory)")
    try:
        info = json.loads((d / "run.json").read_text())
        settings = json.loads((d / "settings.json").read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{d}: cannot resume without {Path(e.filename).name}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}: run.json or settings.json unreadable ({type(e).__name__})") \
            from None
    if info.get("status") == "finished":
        raise CheckpointError(f"{d}: this run finished; there is nothing to resume")
    if info.get("engine") != "local":
        raise CheckpointError(f"{d}: a run of the {info.get('engine')} engine; only the local "
                              "engine writes checkpoints")
    src = info.get("data_source") or {}
    kind = src.get("kind")
    if kind not in ("mock", "replay"):
        raise CheckpointError(f"{d}: a run on {kind or 'unknown'} data cannot be replayed, so "
                              "it cannot be resumed (mock and replay runs can)")
    top_n = int(settings.get("topn_size", 0))  # what names the run's trade log, as run.py does
    if not (d / "trades" / f"top{top_n}_trade_log.jsonl").exists():
        raise CheckpointError(f"{d}: no trade log in trades/")
    return {"run_id": d.name, "log_dir": d.parent, "settings": settings, "kind": kind,
            "replay_path": src.get("path"), "duration_s": src.get("seconds"),
            "top_n": top_n, "started_utc": info.get("started_utc")}


__all__ = ["CHECKPOINT", "CheckpointError", "load_checkpoint", "resume_plan", "save_checkpoint"]
