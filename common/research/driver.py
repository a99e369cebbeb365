"""A sweep from plan to outputs, whatever runs the trials: skip the finished ones (resume), hand
the rest to a runner, keep each result as it arrives, then write the results table, the summary
and the report. The Ray runner is ``actors.sweep``; ``SequentialRunner`` runs in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa
from loguru import logger

from common.engine.stop import StopFlag
from common.research.plan import SweepPlan, Trial
from common.research.report import write_report
from common.research.results import (
    SweepAnalysis,
    analyse,
    format_summary,
    result_rows,
    write_results,
    write_summary,
)
from common.research.store import finished, has_results, load_equity, save_result
from common.research.trial import run_trial


class SweepError(Exception):
    """A sweep that cannot start or go on; the message is one line for the user."""


def _never() -> bool:
    return False


class TrialRunner(Protocol):
    def run(self, trials: list[Trial], should_stop: Callable[[], bool] = _never
            ) -> Iterator[tuple[Trial, dict]]:
        """Run the trials, yielding each with its result as it finishes (any order); once
        ``should_stop()`` is true, start no more and return."""
        ...


class SequentialRunner:
    """Every trial one after another in this process (the baseline the benchmark compares)."""

    def run(self, trials: list[Trial], should_stop: Callable[[], bool] = _never
            ) -> Iterator[tuple[Trial, dict]]:
        for t in trials:
            if should_stop():
                return
            result = {**run_trial(t), "node": "driver", "node_ip": None}
            yield t, result
            # in this process the engine's own stop path takes the signal during a trial (the
            # trial ends early and is recorded as failed): stop the sweep there too
            if (result.get("error") or "").startswith("InterruptedError"):
                return


@dataclass
class SweepOutcome:
    analysis: SweepAnalysis
    table: pa.Table
    records: dict[str, dict]
    ran: int  # trials run by this call (the rest were finished already)
    skipped: int
    interrupted: bool
    summary: str
    stopped_by: str | None = None  # SIGINT / SIGTERM when a signal stopped the sweep


class Progress:
    """Trials done of the total, failures and an ETA at the current pace, every few seconds."""

    def __init__(self, total: int, enabled: bool = True, every_s: float = 2.0) -> None:
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.done = self.failed = 0
        self._t0 = time.perf_counter()
        self._next = self._t0 + every_s

    def update(self, ok: bool, label: str) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if not ok:
            logger.warning("{}: failed (recorded; the sweep goes on)", label)
        now = time.perf_counter()
        if not self.enabled or (now < self._next and self.done < self.total):
            return
        self._next = now + self.every_s
        pace = (now - self._t0) / self.done
        eta = pace * (self.total - self.done)
        logger.bind(progress=True).info(
            "trials {}/{} ({:.0f}%){}, {:,.0f}s elapsed, ETA {:,.0f}s", self.done, self.total,
            100 * self.done / max(self.total, 1),
            f", {self.failed} failed" if self.failed else "", now - self._t0, eta)


def prepare_out_dir(out_dir: str | Path, spec_text: str, resume: bool) -> Path:
    out = Path(out_dir)
    if has_results(out) and not resume:
        raise SweepError(f"{out} already holds a sweep's results: add --resume to continue it, "
                         "or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        spec_path = out / "spec.toml"
        if not spec_path.exists() or not resume:
            spec_path.write_text(spec_text, encoding="utf-8")
    except OSError as e:
        raise SweepError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return out


def run_sweep(plan: SweepPlan, out_dir: str | Path, runner: TrialRunner, resume: bool = False,
              progress: bool = True) -> SweepOutcome:
    """Run every trial of ``plan`` not finished in ``out_dir`` and write the outputs there.
    Ctrl-C stops dispatching; the finished trials are kept and the outputs written for them."""
    out = prepare_out_dir(out_dir, plan.spec.text, resume)
    records = finished(out, plan.trials) if resume else {}
    todo = [t for t in plan.trials if t.key not in records]
    skipped = len(plan.trials) - len(todo)
    if skipped:
        logger.info("resume: {} of {} trials already finished in {}", skipped, len(plan.trials),
                    out)
    logger.info("sweep: {} configurations x {} data units -> {} trials to run", len(plan.configs),
                len(plan.units), len(todo))
    bar = Progress(len(todo), enabled=progress)
    stopped_by = None
    ran = 0
    # the engines' stop path: the first SIGINT/SIGTERM stops dispatching (trials in flight are
    # cancelled), a second one aborts at once; the finished trials are kept either way
    with StopFlag() as stop:
        it = runner.run(todo, lambda: stop.requested)
        try:
            for trial, result in it:
                records[trial.key] = save_result(out, trial, result)
                ran += 1
                bar.update(result.get("status") == "ok", trial.label)
        except KeyboardInterrupt:
            stopped_by = stop.signal or "SIGINT"
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        stopped_by = stopped_by or stop.signal
    interrupted = stopped_by is not None or len(records) < len(plan.trials)
    if interrupted:
        logger.warning("interrupted: {} of {} trials finished; continue with --resume {}",
                       len(records), len(plan.trials), out)
    outcome = write_outputs(plan, out, records, ran, skipped, interrupted)
    outcome.stopped_by = stopped_by
    return outcome


def write_outputs(plan: SweepPlan, out: Path, records: dict[str, dict], ran: int = 0,
                  skipped: int = 0, interrupted: bool = False) -> SweepOutcome:
    an = analyse(plan, records)
    table = write_results(out, result_rows(plan, records, an))
    write_summary(out, an)
    equities = {}
    if an.best is not None:
        for t in plan.trials:
            if t.config_id == an.best.config_id and t.window.role == "full" and t.key in records:
                eq = records[t.key].get("equity") or load_equity(out, t.key)
                if eq:
                    equities[t.unit.label] = eq
    write_report(out, plan, an, records, equities)
    text = format_summary(an)
    if interrupted:
        text += f"\ninterrupted: {len(records)} of {len(plan.trials)} trials finished"
    return SweepOutcome(an, table, records, ran, skipped, interrupted, text)
