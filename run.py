"""Kimchi-premium paper trader: parse flags, build Settings, run an engine, print the KPI summary.

    python run.py                                   # mock market, one hour of event time
    python run.py --data-source replay --replay-path books.parquet --kpi-output-path k.json
    python run.py runs                              # the past runs under logs/
    python run.py report logs/<run_id>              # <run_id>/report.html: plots and tables
    python run.py compare logs/A logs/B             # two runs' KPIs side by side (+ HTML)
    python run.py show-config                       # the effective settings and their sources
    python run.py sweep spec.toml --out sweeps/a    # many runs over parameters, fanned out on Ray

Every problem with the input (flags, environment, files) ends the run with exit code 2 and one
line naming what is wrong. See README.md for every flag and ../.env.paper for every setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from loguru import logger

ENGINES = ("ray", "local")
DEFAULT_ENGINE = "ray"
DEFAULT_NAMESPACE = "arbitrage"
#: flags that only mean something to the Ray engine (refused with --engine local)
RAY_ONLY_FLAGS = (("ray_address", "--ray-address"), ("namespace", "--namespace"),
                  ("monitoring_enabled", "--monitoring-enabled"),
                  ("metrics_export_port", "--metrics-export-port"))


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (argparse's own exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"run.py: error: {message}\n")
        raise SystemExit(2)


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number (got {text!r})") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{name} must be > 0 (got {text!r})")
        return v

    return parse


def _int(name: str):
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer (got {text!r})") from None

    return parse


#: subcommands; anything else is the default one, ``run`` (so ``python run.py`` keeps working)
SUBCOMMANDS = ("run", "report", "runs", "compare", "show-config", "sweep")

EPILOG = """subcommands (the default is run):
  run.py [run] [flags]        run the paper trader (the flags above)
  run.py report RUN_DIR       write RUN_DIR/report.html (plots, cost waterfall, tables)
  run.py runs [--log-dir D]   list the past runs: id, start, engine, data, round trips, PnL
  run.py compare A B [...]    KPIs of run folders side by side, with differences to A, and
                              an HTML page with their equity curves (--html PATH)
  run.py show-config          the effective settings and where each came from
  run.py sweep SPEC --out DIR [--ray-address A] [--resume]
                              a parameter sweep / walk-forward study over many runs, one Ray
                              task per trial (docs/sweeps.md); --resume DIR continues one

examples:
  run.py --engine local --volatility 5 --run-duration-seconds 600 --report
  run.py --data-source replay --replay-path books.parquet --kpi-output-path k.json
  run.py --engine local --data-source real --topn-size 5 --record-path rec/today
  FILL_MODEL_KIND=simple ENTRY_MARGIN_BPS=10 run.py --env-file my.env

settings: every field of .env.paper is an environment variable (SETTLE_MS, ENTRY_MARGIN_BPS,
MOCK_VOLATILITY, UPBIT_LATENCY_MS, FEED_LATENCY_BOUND_MS, ...); flags override the
environment, which overrides the env file (.env.<ARBITRAGE_ENV>, or --env-file).
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="Kimchi-premium arbitrage paper trader (Upbit KRW vs "
                "Binance USDT).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=ENGINES,
                   help=f"execution engine (default {DEFAULT_ENGINE}; local with --resume)")
    p.add_argument("--ray-address", help="join an existing Ray cluster instead of starting one")
    p.add_argument("--namespace", help=f"Ray namespace (default {DEFAULT_NAMESPACE})")
    p.add_argument("--data-source", choices=("mock", "replay", "real"),
                   help="market data (default mock)")
    p.add_argument("--replay-path", help="Parquet file or directory of part-*.parquet to replay")
    p.add_argument("--record-path", help="record received books here (real data only)")
    p.add_argument("--topn-size", type=_int("--topn-size"), help="number of symbols (default 20)")
    p.add_argument("--symbols", help="comma-separated symbols to trade instead of TopN")
    p.add_argument("--run-duration-seconds", type=_positive_float("--run-duration-seconds"),
                   help="event-time length (default: one hour of mock, the whole replay)")
    p.add_argument("--seed", type=_int("--seed"), help="RNG seed (default from settings)")
    p.add_argument("--volatility", type=_positive_float("--volatility"),
                   help="mock market activity (MOCK_VOLATILITY): 1 calibrated, 4-5 a busy market")
    p.add_argument("--speed", type=_positive_float("--speed"),
                   help="pace replay/mock at X event-seconds per wall second")
    p.add_argument("--realtime", action="store_true", help="same as --speed 1")
    p.add_argument("--monitoring-enabled", action="store_true",
                   help="Ray dashboard, Prometheus metrics and a live terminal view")
    p.add_argument("--metrics-export-port", type=_int("--metrics-export-port"),
                   help="Prometheus metrics port of the embedded Ray node (default: Ray picks)")
    p.add_argument("--kpi-output-path", help="write the KPI JSON here")
    p.add_argument("--log-dir", default="logs", help="run folders go to <log-dir>/<run_id>/ (default logs)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted local run on mock or replay data from its last "
                   "checkpoint, with its own settings and data")
    p.add_argument("--report", action="store_true",
                   help="write the run's report.html into its folder when it ends")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--env-file", help="read settings from this file instead of .env.<ARBITRAGE_ENV>")
    p.add_argument("--version", action="version", version=_version(),
                   help="print the version (and the git commit of a checkout) and exit")
    return p


def _version() -> str:
    from common.engine.report import code_version

    v = code_version()
    commit = f" (git {v['git_commit'][:10]}{', modified' if v['git_dirty'] else ''})" \
        if v["git_commit"] else ""
    return f"kimchi-paper {v['package']}{commit}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        cmd, argv = argv[0], argv[1:]
        if cmd == "report":
            return _report(argv)
        if cmd == "runs":
            return _runs(argv)
        if cmd == "compare":
            return _compare(argv)
        if cmd == "show-config":
            return _show_config(argv)
        if cmd == "sweep":
            return _sweep(argv)
    return _run(argv)


def cli() -> None:
    """The ``kimchi-paper`` console script: ``python run.py`` under another name."""
    sys.exit(main())


def _runs(argv: list[str]) -> int:
    p = _Parser(prog="run.py runs", description="List the past runs under a log directory.")
    p.add_argument("--log-dir", default="logs", help="where the run folders are (default logs)")
    args = p.parse_args(argv)
    from common.reporting.runs import RunFolderError, format_runs, list_runs

    try:
        print(format_runs(list_runs(args.log_dir)))
    except RunFolderError as e:
        return _fail(str(e))
    return 0


def _report(argv: list[str]) -> int:
    p = _Parser(prog="run.py report", description="Write a run folder's report.html: one "
                "self-contained page of plots and tables (no network needed to view it).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. logs/<run_id>")
    p.add_argument("--out", help="write here instead of RUN_DIR/report.html")
    args = p.parse_args(argv)
    return _write_report(args.run_dir, args.out)


def _write_report(run_dir: str, out: str | None = None) -> int:
    from common.reporting.analysis import RunFolderMissing
    from common.reporting.html import build_run_report

    try:
        path, notices = build_run_report(run_dir, out)
    except RunFolderMissing as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"report: cannot write it ({e.strerror or e}): {e.filename or run_dir}")
    for n in notices:
        sys.stderr.write(f"run.py: report: {n}\n")
    print(f"report: {path}")
    return 0


def _compare(argv: list[str]) -> int:
    p = _Parser(prog="run.py compare", description="Put the KPIs of run folders side by side, "
                "each with its difference to the first, and write an HTML page with their "
                "equity curves overlaid.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--html", help="the comparison page (default: compare.html beside the first "
                   "run folder)")
    p.add_argument("--no-html", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if len(args.run_dirs) < 2:
        return _fail("compare: give two run folders or more (e.g. logs/<run_id> logs/<run_id>)")
    from common.reporting.runs import RunFolderError, format_compare, load_run

    try:
        print(format_compare([load_run(d) for d in args.run_dirs]))
    except RunFolderError as e:
        return _fail(str(e))
    if args.no_html:
        return 0
    from common.reporting.html import build_compare_report

    out = Path(args.html) if args.html else Path(args.run_dirs[0]).resolve().parent / "compare.html"
    try:
        path, _ = build_compare_report(args.run_dirs, out)
    except OSError as e:
        return _fail(f"compare: cannot write {out} ({e.strerror or e})")
    print(f"comparison: {path}")
    return 0


def _show_config(argv: list[str]) -> int:
    p = _Parser(prog="run.py show-config", description="Print the effective settings and where "
                "each came from (default, env file, environment).")
    p.add_argument("--env-file", help="read settings from this file instead of .env.<ARBITRAGE_ENV>")
    args = p.parse_args(argv)
    from common.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(env_file=args.env_file)
        sources = Settings.sources(env_file=args.env_file)
    except SettingsError as e:
        return _fail(str(e))
    values = settings.effective()
    width = max(len(k) for k in values)
    for name in sorted(values):
        print(f"{name.upper().ljust(width)} = {json.dumps(values[name])}  ({sources[name]})")
    return 0


def _sweep(argv: list[str]) -> int:
    p = _Parser(prog="run.py sweep", description="Run a parameter sweep or walk-forward study "
                "(a TOML SPEC, see docs/sweeps.md): every trial a run of the local engine, fanned "
                "out as Ray tasks over every core of an embedded cluster (or --ray-address).")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="the sweep's TOML file")
    p.add_argument("--out", help="the sweep folder: results, summary, report.html, trials/")
    p.add_argument("--resume", nargs="?", const=True, metavar="SWEEP_DIR",
                   help="continue an interrupted sweep (its folder), skipping finished trials")
    p.add_argument("--ray-address", help="run on an existing Ray cluster")
    p.add_argument("--monitoring-enabled", action="store_true",
                   help="the Ray dashboard of the embedded cluster (trials by name)")
    p.add_argument("--env-file", help="base settings from this file instead of .env.<ARBITRAGE_ENV>")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    out, spec_path = args.out, args.spec
    if isinstance(args.resume, str):
        if out and Path(out) != Path(args.resume):
            return _fail("sweep: give the sweep folder once (--resume DIR, or --out DIR --resume)")
        out = args.resume
        spec_path = spec_path or str(Path(out) / "spec.toml")
    if not spec_path or not out:
        return _fail("sweep: give a SPEC and --out DIR (or --resume DIR)")
    logger.remove()
    logger.add(sys.stderr, level="WARNING" if args.quiet else "INFO",
               format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")
    from common.research.driver import SweepError
    from common.research.plan import build_plan
    from common.research.spec import SpecError, load_spec
    from common.settings import SettingsError

    try:
        plan = build_plan(load_spec(spec_path), env_file=args.env_file)
    except (SpecError, SettingsError) as e:
        return _fail(str(e))
    from actors.sweep import run_sweep_on_ray

    try:
        outcome = run_sweep_on_ray(plan, out, args.ray_address, resume=bool(args.resume),
                                   progress=not args.quiet, dashboard=args.monitoring_enabled)
    except SweepError as e:
        return _fail(str(e))
    print(outcome.summary)
    print(f"results: {Path(out) / 'sweep_results.parquet'} (and .csv), "
          f"{Path(out) / 'summary.json'}, {Path(out) / 'report.html'}", flush=True)
    from common.engine.report import exit_code

    # 130 after SIGINT, 143 after SIGTERM, as a run; a sweep cut short otherwise: 130 too
    return exit_code(outcome.stopped_by) or (130 if outcome.interrupted else 0)


#: flags that shape a run: a resumed run takes all of them from its folder
RUN_SHAPING_FLAGS = (("data_source", "--data-source"), ("replay_path", "--replay-path"),
                     ("record_path", "--record-path"), ("topn_size", "--topn-size"),
                     ("symbols", "--symbols"), ("run_duration_seconds", "--run-duration-seconds"),
                     ("seed", "--seed"), ("volatility", "--volatility"),
                     ("env_file", "--env-file"))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.resume:
        given = [flag for name, flag in RUN_SHAPING_FLAGS + RAY_ONLY_FLAGS
                 if getattr(args, name) not in (None, False)]
        if args.engine == "ray":
            given.insert(0, "--engine ray")
        if given:
            return _fail(f"--resume: the run goes on as it was configured (its folder's settings "
                         f"and data); drop {', '.join(given)}")
        return _resume(args)
    if args.data_source is None:
        args.data_source = "mock"
    args.engine = args.engine or DEFAULT_ENGINE
    if args.engine == "local":
        given = [flag for name, flag in RAY_ONLY_FLAGS if getattr(args, name)]
        if given:
            one = len(given) == 1
            return _fail(f"{', '.join(given)}: only the Ray engine uses "
                         f"{'this flag' if one else 'these flags'} "
                         f"(drop {'it' if one else 'them'}, or run with --engine ray)")
    _log_to_terminal(args.quiet)

    from common.engine.build import new_run_id, open_source
    from common.marketdata.replay import DataSourceError
    from common.settings import Settings, SettingsError

    overrides = {"topn_size": args.topn_size, "seed": args.seed, "symbols": args.symbols,
                 "mock_volatility": args.volatility}
    try:
        settings = Settings.from_env(overrides={k: v for k, v in overrides.items() if v is not None},
                                     env_file=args.env_file)
    except SettingsError as e:
        return _fail(str(e))
    if args.volatility is not None and args.data_source != "mock":
        return _fail("--volatility: only the mock market has a volatility knob")
    if args.record_path and args.data_source != "real":
        return _fail("--record-path: recording needs --data-source real")
    from common.engine.storage import StorageError, check_writable_dir

    try:
        check_writable_dir(args.log_dir, "--log-dir")
        if args.record_path:
            check_writable_dir(args.record_path, "--record-path")
        if args.kpi_output_path:
            check_writable_dir(Path(args.kpi_output_path).resolve().parent, "--kpi-output-path")
    except StorageError as e:
        return _fail(str(e))
    speed = 1.0 if args.realtime else args.speed
    try:
        source = open_source(args.data_source, settings, args.replay_path,
                             args.run_duration_seconds, record_path=args.record_path)
    except DataSourceError as e:
        return _fail(str(e))
    run_id = new_run_id()
    top_n = settings.topn_size
    _log_to_run_folder(Path(args.log_dir) / run_id, settings)

    from common.engine.local import run_local
    from common.engine.pacing import paced
    from common.engine.report import exit_code, format_summary

    if speed is not None:
        source = paced(source, speed)
    if args.engine == "ray":
        from actors.engine import RayEngineError, RayOptions, run_ray

        opts = RayOptions(namespace=args.namespace or DEFAULT_NAMESPACE, address=args.ray_address,
                          monitoring=args.monitoring_enabled,
                          metrics_export_port=args.metrics_export_port, progress=not args.quiet,
                          lean=settings.ray_lean)
        try:
            run = run_ray(settings, source, run_id, args.log_dir, args.kpi_output_path, top_n, opts)
        except (DataSourceError, RayEngineError) as e:
            return _fail(str(e))
        _summary(format_summary(run.report))
        if args.report:
            _write_report(str(Path(args.log_dir) / run_id))
        return exit_code(run.stopped_by)
    try:
        report = run_local(settings, source, run_id, args.log_dir, args.kpi_output_path, top_n,
                           progress=not args.quiet)
    except DataSourceError as e:
        return _fail(str(e))
    _summary(format_summary(report))
    if args.report:
        _write_report(str(Path(args.log_dir) / run_id))
    return exit_code(report.get("stopped_by"))


def _resume(args) -> int:
    """``--resume RUN_DIR``: continue a local run from its checkpoint (``common.engine.checkpoint``)."""
    from common.engine.checkpoint import CheckpointError, load_checkpoint, resume_plan
    from common.engine.local import run_local
    from common.engine.pacing import paced
    from common.engine.report import exit_code, format_summary
    from common.engine.storage import StorageError, check_writable_dir
    from common.marketdata.replay import DataSourceError
    from common.settings import Settings, SettingsError

    try:
        plan = resume_plan(args.resume)
        state = load_checkpoint(args.resume)
        check_writable_dir(args.resume, "--resume")
    except (CheckpointError, StorageError) as e:
        return _fail(str(e))
    try:
        settings = Settings.from_env(overrides=plan["settings"])
    except SettingsError as e:
        return _fail(f"--resume: the run's settings.json: {e}")
    from common.engine.build import open_source

    try:
        source = open_source(plan["kind"], settings, plan["replay_path"], plan["duration_s"])
    except DataSourceError as e:
        return _fail(f"--resume: the run's data: {e}")
    speed = 1.0 if args.realtime else args.speed
    if speed is not None:
        source = paced(source, speed)
    _log_to_terminal(args.quiet)
    run_dir = Path(plan["log_dir"]) / plan["run_id"]
    _log_to_run_folder(run_dir, settings)
    try:
        report = run_local(settings, source, plan["run_id"], plan["log_dir"],
                           args.kpi_output_path, plan["top_n"], progress=not args.quiet,
                           resume=state, started_utc=plan["started_utc"])
    except DataSourceError as e:
        return _fail(str(e))
    _summary(format_summary(report))
    if args.report:
        _write_report(str(run_dir))
    return exit_code(report.get("stopped_by"))


def _log_to_run_folder(run_dir: Path, settings) -> None:
    """The run's own log, in its folder (appended to by a resume): rotated by size for long
    live runs."""
    logger.add(run_dir / "run.log", level="DEBUG", rotation=f"{settings.log_rotation_mb} MB",
               retention=settings.log_retention_files,
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}:{line} {message}")


def _log_to_terminal(quiet: bool) -> None:
    logger.remove()
    # progress lines reach the terminal only when it is one (a log file gets them in run.log)
    on_tty = sys.stderr.isatty()
    logger.add(sys.stderr, level="WARNING" if quiet else "INFO",
               filter=lambda r: on_tty or not r["extra"].get("progress"),
               format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")


def _summary(text: str) -> None:
    """The KPI summary on stdout, and in the run's log (below the terminal's log level)."""
    print(text, flush=True)
    logger.debug("KPI summary\n{}", text)


def _fail(message: str) -> int:
    sys.stderr.write(f"run.py: error: {message}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
