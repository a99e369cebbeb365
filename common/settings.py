"""Run settings: defaults in code < ``.env.<ARBITRAGE_ENV>`` < environment variables < CLI flags.

``Settings.from_env()`` is the one way the runner builds its settings. ``ARBITRAGE_ENV`` (default
``paper``) selects the file ``.env.<ARBITRAGE_ENV>`` in the current working directory; it is read
from the environment or an override only, never from the file itself. Every environment variable
is the upper-case field name (matched case-insensitively). Any problem is raised as one
``SettingsError`` whose text is a single line ``<VARIABLE>: <problem> (got <value>)``, which the
runner prints before exiting with code 2.

The settings object is frozen and picklable, so it can be shipped to Ray actors as it is.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _SourceError

from common.fill.models import FILL_MODEL_KINDS  # the one list: the fill models' registry

__all__ = [
    "DEFAULT_ENV",
    "FILL_MODEL_KINDS",
    "Settings",
    "SettingsError",
    "env_file_for",
]

#: The value of ``ARBITRAGE_ENV`` when it is not set.
DEFAULT_ENV = "paper"

_ENV_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_TICKER_RE = re.compile(r"[A-Z0-9]+")
_SECRET_PARTS = ("key", "secret", "token", "password")
_MAX_SHOWN = 120
_FILE_ENCODING = "utf-8-sig"  # plain UTF-8, tolerating a byte-order mark


class SettingsError(ValueError):
    """A setting is invalid or its file cannot be read. ``str()`` is one line for the user.

    ``variable`` is the environment variable (or file) the message is about.
    """

    def __init__(self, message: str, variable: str | None = None) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(one_line)
        self.message = one_line
        self.variable = variable if variable is not None else one_line.split(":", 1)[0]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.variable))

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Parsing helpers for the list and map variables (no JSON: "BTC,ETH" and "BTC=0.001,ETH=0.01").


def _ticker(raw: Any, what: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"{what} must be a ticker string, not {type(raw).__name__}")
    ticker = raw.strip().upper()
    if not _TICKER_RE.fullmatch(ticker):
        raise ValueError(f"{what} {raw.strip()!r} is not a ticker (letters and digits only)")
    return ticker


def _parse_tickers(value: Any) -> tuple[str, ...]:
    """``"btc, ETH,"`` or ``["BTC", "eth"]`` -> ``("BTC", "ETH")``: upper-cased, de-duplicated."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("must be a comma-separated list of tickers like BTC,ETH")
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        ticker = _ticker(item, "entry")
        if ticker not in out:
            out.append(ticker)
    return tuple(out)


def _parse_pairs(value: Any) -> list[tuple[str, Any]]:
    """``"A=1,B=2"`` or a mapping -> ``[("A", "1"), ("B", "2")]`` with tickers as keys."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        raw_pairs = list(value.items())
    elif isinstance(value, str):
        raw_pairs = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"entry {part!r} is not KEY=VALUE")
            raw_pairs.append((key, val.strip()))
    else:
        raise ValueError("must be KEY=VALUE pairs separated by commas")
    pairs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for key, val in raw_pairs:
        ticker = _ticker(key, "key")
        if ticker in seen:
            raise ValueError(f"key {ticker} is given twice")
        seen.add(ticker)
        pairs.append((ticker, val))
    return pairs


def _positive_number(raw: Any, what: str) -> float:
    number: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a number > 0")
    return number


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    ok = (
        parts is not None
        and parts.scheme.lower() in schemes
        and bool(parts.netloc)
        and not any(ch.isspace() for ch in url)
    )
    if not ok:
        wanted = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"must start with {wanted} followed by a host")
    return url.rstrip("/")


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS)


# --------------------------------------------------------------------------------------------
# Error formatting: pydantic's ValidationError -> one line "<VARIABLE>: <problem> (got <value>)".


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value if value.strip() else repr(value)
    elif isinstance(value, Mapping):
        text = ",".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


def _bound(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _problem(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {_bound(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be > {_bound(ctx.get('gt'))}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be a boolean (true/false/1/0/yes/no)"
    if kind == "string_type":
        return "must be a string"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    message = str(error.get("msg", "is invalid"))
    return message[:1].lower() + message[1:]


def _from_validation_error(exc: ValidationError) -> SettingsError:
    lines: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ("?",)
        variable = str(loc[0]).upper()
        lines.append((variable, f"{variable}: {_problem(error)} (got {_show(error.get('input'))})"))
    variable, message = lines[0]
    others = [name for name, _ in lines[1:]]
    if others:
        message += f" [also invalid: {', '.join(others)}]"
    return SettingsError(message, variable)


# --------------------------------------------------------------------------------------------
# The env file.


def env_file_for(arbitrage_env: str) -> Path:
    """The settings file ``.env.<arbitrage_env>``, relative to the current working directory."""
    return Path(f".env.{arbitrage_env}")


def _check_env_file(path: Path) -> None:
    """Raise ``SettingsError`` naming ``path`` if it cannot be read, decoded or parsed."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SettingsError(f"{path}: cannot read ({reason})", str(path)) from None
    try:
        text = raw.decode(_FILE_ENCODING)
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{path}: cannot decode as UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            str(path),
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip()
            raise SettingsError(
                f"{path}: cannot parse line {binding.original.line} (got {_show(line)})",
                str(path),
            )


def _arbitrage_env_from(overrides: Mapping[str, Any]) -> Any:
    if overrides.get("arbitrage_env") is not None:
        return overrides["arbitrage_env"]
    exact = os.environ.get("ARBITRAGE_ENV")
    if exact is not None:
        return exact
    for name, value in os.environ.items():
        if name.lower() == "arbitrage_env":
            return value
    return DEFAULT_ENV


# --------------------------------------------------------------------------------------------

_Tickers = Annotated[tuple[str, ...], NoDecode]
_LotSizes = Annotated[dict[str, float], NoDecode]
_Aliases = Annotated[dict[str, str], NoDecode]


class Settings(BaseSettings):
    """Every tunable of a run. Build it with :meth:`from_env`; read-only once built."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        env_prefix="",
        env_file=None,
        env_file_encoding=_FILE_ENCODING,
        env_ignore_empty=False,
        allow_inf_nan=False,
        validate_default=True,
    )

    # --- run --------------------------------------------------------------------------------
    arbitrage_env: str = Field(DEFAULT_ENV, description="selects the file .env.<ARBITRAGE_ENV>")
    seed: int = Field(7, ge=0, description="RNG seed: mock market, latency jitter, fill models")

    # --- universe ---------------------------------------------------------------------------
    topn_size: int = Field(20, ge=1, description="number of symbols TopN trades")
    symbols: _Tickers = Field((), description="fixed symbol list; empty = TopN")
    symbol_aliases: _Aliases = Field({}, description="Upbit ticker -> Binance ticker")
    symbol_deny: _Tickers = Field((), description="symbols never traded")
    topn_refresh_s: float = Field(300.0, gt=0, description="TopN re-selection period")
    premium_outlier_bps: float = Field(
        1500.0, gt=0, description="TopN drops symbols this far from the median premium"
    )

    # --- fill model -------------------------------------------------------------------------
    fill_model_enable: bool = Field(True, description="off: full fills at the quoted price")
    fill_model_kind: str = Field("book_walk", description="simple | book_walk")
    fill_model_partial_enable: bool = Field(True, description="allow partial fills")
    fill_model_slippage_enable: bool = Field(True, description="apply slippage")
    fill_model_slippage_alpha: float = Field(0.0001, ge=0, description="slippage growth with size")
    fill_model_simple_volume_multiplier: float = Field(
        2.0, gt=0, description="simple model: available volume = order_qty * this"
    )
    fill_model_hidden_depth_ratio: float = Field(
        0.3, ge=0, description="book walk: hidden depth beyond the visible book, as a ratio"
    )
    fill_model_impact_exponent: float = Field(
        1.5, ge=1, description="book walk: exponent of the impact beyond visible depth"
    )

    # --- latency and orders -----------------------------------------------------------------
    upbit_latency_ms: float = Field(30.0, ge=0, description="order latency to Upbit")
    binance_latency_ms: float = Field(120.0, ge=0, description="order latency to Binance")
    latency_jitter_ms: float = Field(10.0, ge=0, description="uniform jitter added per leg")
    max_slippage_bps: float = Field(15.0, ge=0, description="IOC limit distance from best price")
    settle_ms: int = Field(250, ge=1, description="balance settlement chunk")
    upbit_feed_latency_ms: float = Field(
        30.0, ge=0, description="mock: Upbit venue time -> receive time (feed latency)")
    binance_feed_latency_ms: float = Field(
        15.0, ge=0, description="mock: Binance venue time -> receive time (feed latency)")
    feed_latency_jitter_ms: float = Field(
        10.0, ge=0, description="mock: seeded jitter added to each book's feed latency")
    feed_latency_bound_ms: float = Field(
        1000.0, gt=0, description="a book received later than this after its venue time is a "
        "straggler (counted, not used); fills wait this long for the venue's books")

    # --- mock market -------------------------------------------------------------------------
    mock_volatility: float = Field(
        1.0, gt=0, description="mock market activity: 1 = calibrated, higher = busier market")

    # --- fees and inventory -----------------------------------------------------------------
    upbit_fee_bps: float = Field(5.0, ge=0, description="Upbit KRW taker fee")
    binance_fee_bps: float = Field(10.0, ge=0, description="Binance spot taker fee")
    initial_krw: float = Field(300_000_000.0, ge=0, description="initial KRW on Upbit")
    initial_usdt: float = Field(200_000.0, ge=0, description="initial USDT on Binance")
    initial_coin_usd: float = Field(
        20_000.0, ge=0, description="coin inventory per symbol per venue, USD at first price"
    )

    # --- strategy ---------------------------------------------------------------------------
    trade_notional_usd: float = Field(3000.0, gt=0, description="target size of one entry")
    ewma_halflife_s: float = Field(600.0, gt=0, description="half-life of the premium level")
    warmup_s: float = Field(120.0, ge=0, description="history needed before the first entry")
    entry_margin_bps: float = Field(5.0, ge=0, description="edge required over round-trip costs")
    expected_slippage_bps: float = Field(
        2.0, ge=0, description="per-leg slippage of a book side whose depth is unknown")
    level_drift_prior: float = Field(
        0.3, ge=0, le=1, description="prior share of the entry deviation the level gives back "
        "over a hold (learnt from closed round trips)")
    latency_cost_prior_bps: float = Field(
        0.5, ge=0, description="prior latency cost per leg (learnt from settled legs)")
    cost_prior_weight: float = Field(
        10.0, gt=0, description="how many observations each cost-model prior is worth")
    exit_band_bps: float = Field(5.0, ge=0, description="exit within this band of the level")
    stop_loss_bps: float = Field(80.0, gt=0, description="exit when moved this far against")
    max_holding_s: float = Field(1800.0, gt=0, description="exit after holding this long")

    # --- risk -------------------------------------------------------------------------------
    max_notional_per_trade_usd: float = Field(10_000.0, gt=0, description="cap per trade")
    max_exposure_per_symbol_usd: float = Field(15_000.0, gt=0, description="cap per symbol")
    max_total_exposure_usd: float = Field(150_000.0, gt=0, description="cap over all symbols")
    max_open_round_trips: int = Field(20, ge=1, description="cap on open round trips")
    max_loss_usd: float = Field(5_000.0, gt=0, description="no entries below -this total PnL")
    lot_sizes: _LotSizes = Field({}, description="explicit lot size per symbol")
    lot_value_usd: float = Field(1.0, gt=0, description="derived lot: about this much USD")
    stale_ms: int = Field(5000, ge=1, description="a book older than this is stale")

    # --- endpoints --------------------------------------------------------------------------
    upbit_rest_url: str = Field("https://api.upbit.com", description="Upbit REST endpoint")
    upbit_ws_url: str = Field("wss://api.upbit.com/websocket/v1", description="Upbit WebSocket")
    binance_rest_url: str = Field("https://api.binance.com", description="Binance REST endpoint")
    binance_ws_url: str = Field("wss://stream.binance.com:9443", description="Binance WebSocket")
    live_feed_process: bool = Field(
        True, description="parse live books in a process of their own (false: in a thread)")

    # --- run folder -------------------------------------------------------------------------
    log_rotation_mb: int = Field(100, ge=1, description="run.log rolls over at this size (MB)")
    log_retention_files: int = Field(
        10, ge=1, description="rolled-over run.log files kept per run")
    ray_lean: bool = Field(
        True, description="with monitoring off, start the embedded Ray cluster without event "
        "stats and task events, metrics every 60 s (less idle CPU); false keeps Ray's defaults")
    checkpoint_interval_s: float = Field(
        30.0, ge=0, description="wall seconds between checkpoints of a local run (0: every batch)")
    series_interval_s: float = Field(
        5.0, gt=0, le=3600, description="event-time grid of the premium series kept for plots")

    # --- engine -----------------------------------------------------------------------------
    batch_rows: int = Field(65536, ge=1, description="rows per market-data batch")
    snapshot_every_chunks: int = Field(20, ge=1, description="symbol actor snapshot cadence")
    max_inflight_batches: int = Field(4, ge=1, description="market-data batches in flight at once")

    # ---------------------------------------------------------------------------- validators

    @field_validator("arbitrage_env", mode="before")
    @classmethod
    def _valid_env_name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _ENV_NAME_RE.fullmatch(value):
            raise ValueError("must be a name made of letters, digits, '_' or '-'")
        return value

    @field_validator("symbols", "symbol_deny", mode="before")
    @classmethod
    def _tickers(cls, value: Any) -> tuple[str, ...]:
        return _parse_tickers(value)

    @field_validator("symbol_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> dict[str, str]:
        return {key: _ticker(val, f"alias of {key}") for key, val in _parse_pairs(value)}

    @field_validator("lot_sizes", mode="before")
    @classmethod
    def _lots(cls, value: Any) -> dict[str, float]:
        return {
            key: _positive_number(val, f"lot size of {key}") for key, val in _parse_pairs(value)
        }

    @field_validator("fill_model_kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        kind = value.strip().lower() if isinstance(value, str) else value
        if kind not in FILL_MODEL_KINDS:
            raise ValueError(f"must be one of {'|'.join(FILL_MODEL_KINDS)}")
        return kind

    @field_validator("upbit_rest_url", "binance_rest_url", mode="after")
    @classmethod
    def _rest_url(cls, value: str) -> str:
        return _check_url(value, ("http", "https"))

    @field_validator("upbit_ws_url", "binance_ws_url", mode="after")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        return _check_url(value, ("ws", "wss"))

    # ------------------------------------------------------------------------------ sources

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: overrides (CLI flags), then the environment, then the file.
        return (init_settings, env_settings, dotenv_settings)

    # ---------------------------------------------------------------------------------- API

    @classmethod
    def from_env(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env_file: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Build the settings: defaults < env file < environment variables < ``overrides``.

        ``overrides`` are keyed by field name (case-insensitive); ``None`` values are skipped, so
        unset CLI flags can be passed as they are. The env file is ``env_file`` if given (then it
        must exist), else ``.env.<ARBITRAGE_ENV>`` in the working directory if it exists.
        Raises ``SettingsError`` with a one-line message on any problem.
        """
        fields = cls.model_fields
        given: dict[str, Any] = {}
        for name, value in (overrides or {}).items():
            key = str(name).lower()
            if key not in fields:
                raise SettingsError(f"{key.upper()}: unknown setting (got {_show(value)})")
            if value is not None:
                given[key] = value

        arbitrage_env = _arbitrage_env_from(given)
        if not isinstance(arbitrage_env, str) or not _ENV_NAME_RE.fullmatch(arbitrage_env):
            raise SettingsError(
                "ARBITRAGE_ENV: must be a name made of letters, digits, '_' or '-' "
                f"(got {_show(arbitrage_env)})"
            )
        given["arbitrage_env"] = arbitrage_env  # never taken from the file itself

        if env_file is not None:
            path: Path | None = Path(env_file)
            _check_env_file(path)
        else:
            path = env_file_for(arbitrage_env)
            if os.path.lexists(path):
                _check_env_file(path)
            else:
                path = None

        try:
            return cls(_env_file=path, **given)
        except ValidationError as exc:
            raise _from_validation_error(exc) from None
        except _SourceError as exc:
            raise SettingsError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            source = str(path) if path is not None else "environment"
            raise SettingsError(f"{source}: cannot read ({exc})", source) from None

    @classmethod
    def sources(cls, env_file: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Where each setting of ``from_env`` (without overrides) comes from: ``environment``,
        the env file's path, or ``default``."""
        env_names = {name.lower() for name in os.environ}
        path: Path | None
        if env_file is not None:
            path = Path(env_file)
        else:
            path = env_file_for(_arbitrage_env_from({}))
            path = path if os.path.lexists(path) else None
        in_file: set[str] = set()
        if path is not None:
            _check_env_file(path)
            text = path.read_bytes().decode(_FILE_ENCODING)
            in_file = {b.key.lower() for b in parse_stream(io.StringIO(text)) if b.key}
        out = {}
        for name in cls.model_fields:
            if name in env_names:
                out[name] = "environment"
            elif name in in_file:
                out[name] = str(path)
            else:
                out[name] = "default"
        return out

    def effective(self) -> dict[str, Any]:
        """All settings as a JSON-serialisable dict (tuples become lists), secrets left out."""
        data = self.model_dump(mode="json")
        return {name: value for name, value in data.items() if not _is_secret_name(name)}

    def lot_size_for(self, symbol: str, price_usd: float) -> float:
        """The lot of ``symbol``: ``LOT_SIZES`` if given, else a power of ten worth at most
        ``lot_value_usd`` at ``price_usd``: ``10 ** floor(log10(lot_value_usd / price_usd))``."""
        from common.risk.guard import derived_lot

        explicit = self.lot_sizes.get(symbol.upper())
        if explicit is not None:
            return explicit
        try:
            return derived_lot(price_usd, self.lot_value_usd)
        except ValueError as e:
            raise ValueError(f"{symbol}: {e}") from None
