"""Settings: precedence (defaults < file < environment < overrides), validation, files, pickling."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.settings import FILL_MODEL_KINDS, Settings, SettingsError, env_file_for

ROOT = Path(__file__).resolve().parents[1]
FIELDS = tuple(Settings.model_fields)
ENV_NAMES = tuple(name.upper() for name in FIELDS)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run every test in an empty directory with none of our variables in the environment."""
    for name in list(os.environ):
        if name.lower() in FIELDS:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- defaults


def test_defaults_without_any_file() -> None:
    s = Settings.from_env()
    assert s.arbitrage_env == "paper"
    assert s.seed == 7
    assert s.topn_size == 20
    assert s.symbols == ()
    assert s.fill_model_enable is True
    assert s.fill_model_kind == "book_walk"
    assert s.fill_model_partial_enable is True
    assert s.fill_model_slippage_enable is True
    assert s.fill_model_slippage_alpha == 0.0001
    assert s.fill_model_simple_volume_multiplier == 2.0
    assert s.fill_model_hidden_depth_ratio == 0.3
    assert s.fill_model_impact_exponent == 1.5
    assert (s.upbit_latency_ms, s.binance_latency_ms, s.latency_jitter_ms) == (30.0, 120.0, 10.0)
    assert s.max_slippage_bps == 15.0
    assert s.settle_ms == 250
    assert (s.upbit_fee_bps, s.binance_fee_bps) == (5.0, 10.0)
    assert (s.initial_krw, s.initial_usdt, s.initial_coin_usd) == (
        300_000_000.0,
        200_000.0,
        20_000.0,
    )
    assert s.trade_notional_usd == 3000.0
    assert (s.ewma_halflife_s, s.warmup_s) == (600.0, 120.0)
    assert (s.entry_margin_bps, s.expected_slippage_bps) == (5.0, 2.0)
    assert (s.exit_band_bps, s.stop_loss_bps, s.max_holding_s) == (5.0, 80.0, 1800.0)
    assert s.max_notional_per_trade_usd == 10_000.0
    assert s.max_exposure_per_symbol_usd == 15_000.0
    assert s.max_total_exposure_usd == 150_000.0
    assert s.max_open_round_trips == 20
    assert s.max_loss_usd == 5_000.0
    assert s.lot_sizes == {} and s.lot_value_usd == 1.0
    assert s.stale_ms == 5000
    assert s.symbol_aliases == {} and s.symbol_deny == ()
    assert (s.topn_refresh_s, s.premium_outlier_bps) == (300.0, 1500.0)
    assert s.upbit_rest_url == "https://api.upbit.com"
    assert s.upbit_ws_url == "wss://api.upbit.com/websocket/v1"
    assert s.binance_rest_url == "https://api.binance.com"
    assert s.binance_ws_url == "wss://stream.binance.com:9443"
    assert (s.batch_rows, s.snapshot_every_chunks, s.max_inflight_batches) == (65536, 20, 4)


def test_frozen() -> None:
    s = Settings.from_env()
    with pytest.raises(ValueError):
        s.seed = 8  # type: ignore[misc]


# ----------------------------------------------------------------------------- precedence


def test_file_env_override_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / ".env.paper", "SEED=11\nTOPN_SIZE=5\nUPBIT_LATENCY_MS=40\n")
    s = Settings.from_env()
    assert (s.seed, s.topn_size, s.upbit_latency_ms) == (11, 5, 40.0)

    monkeypatch.setenv("TOPN_SIZE", "6")
    monkeypatch.setenv("UPBIT_LATENCY_MS", "41")
    s = Settings.from_env()
    assert (s.seed, s.topn_size, s.upbit_latency_ms) == (11, 6, 41.0)

    s = Settings.from_env({"upbit_latency_ms": 42.5})
    assert (s.seed, s.topn_size, s.upbit_latency_ms) == (11, 6, 42.5)


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("fill_model_kind", "SIMPLE")
    assert Settings.from_env().fill_model_kind == "simple"
    assert Settings.from_env({"FILL_MODEL_KIND": "book_walk"}).fill_model_kind == "book_walk"


def test_none_overrides_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".env.paper", "TOPN_SIZE=3\n")
    assert Settings.from_env({"topn_size": None, "seed": None}).topn_size == 3


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"no_such_thing": 1})
    assert str(info.value) == "NO_SUCH_THING: unknown setting (got 1)"


def test_unknown_keys_in_file_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / ".env.paper", "SOME_OTHER_TOOL=1\nFILL_MODEL_FOO=bar\nSEED=3\n")
    s = Settings.from_env()
    assert s.seed == 3
    assert "some_other_tool" not in s.effective()


def test_arbitrage_env_selects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / ".env.paper", "SEED=1\n")
    write(tmp_path / ".env.live", "SEED=2\n")
    assert Settings.from_env().seed == 1
    monkeypatch.setenv("ARBITRAGE_ENV", "live")
    s = Settings.from_env()
    assert (s.arbitrage_env, s.seed) == ("live", 2)
    assert env_file_for("live") == Path(".env.live")
    s = Settings.from_env({"arbitrage_env": "paper"})
    assert (s.arbitrage_env, s.seed) == ("paper", 1)


def test_arbitrage_env_is_not_read_from_the_file(tmp_path: Path) -> None:
    write(tmp_path / ".env.paper", "ARBITRAGE_ENV=live\nSEED=1\n")
    write(tmp_path / ".env.live", "SEED=2\n")
    s = Settings.from_env()
    assert (s.arbitrage_env, s.seed) == ("paper", 1)


def test_missing_selected_file_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARBITRAGE_ENV", "staging")
    s = Settings.from_env()
    assert s.arbitrage_env == "staging"
    assert s.seed == 7


def test_explicit_env_file(tmp_path: Path) -> None:
    other = write(tmp_path / "custom.env", "SEED=99\n")
    write(tmp_path / ".env.paper", "SEED=1\n")
    assert Settings.from_env(env_file=other).seed == 99
    assert Settings.from_env(env_file=str(other)).seed == 99


def test_explicit_env_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env_file=tmp_path / "nope.env")
    assert str(info.value).startswith(f"{tmp_path / 'nope.env'}: cannot read (")


def test_bad_arbitrage_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARBITRAGE_ENV", "../etc")
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert str(info.value).startswith("ARBITRAGE_ENV: ")
    assert "(got ../etc)" in str(info.value)


# ------------------------------------------------------------------------- unreadable files


def test_directory_as_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env.paper").mkdir()
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert str(info.value).startswith(".env.paper: cannot read (")


def test_invalid_utf8_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env.paper").write_bytes(b"SEED=1\nSYMBOLS=\xff\xfe\n")
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    message = str(info.value)
    assert message.startswith(".env.paper: cannot decode as UTF-8")
    assert "\n" not in message


def test_unparsable_line_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / ".env.paper", "SEED=1\nthis is not a setting\n")
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert str(info.value).startswith(".env.paper: cannot parse line 2")


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    (tmp_path / ".env.paper").write_bytes("\ufeffSEED=5\n".encode())
    assert Settings.from_env().seed == 5


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("FILL_MODEL_SLIPPAGE_ALPHA", "-1", "FILL_MODEL_SLIPPAGE_ALPHA: must be >= 0 (got -1)"),
        ("TOPN_SIZE", "0", "TOPN_SIZE: must be >= 1 (got 0)"),
        ("FILL_MODEL_KIND", "foo", "FILL_MODEL_KIND: must be one of simple|book_walk (got foo)"),
        ("LOT_SIZES", "BTC=x", "LOT_SIZES: lot size of BTC must be a number > 0 (got BTC=x)"),
        ("UPBIT_WS_URL", "ftp://x", None),
        ("SETTLE_MS", "abc", "SETTLE_MS: must be an integer (got abc)"),
        ("TRADE_NOTIONAL_USD", "0", "TRADE_NOTIONAL_USD: must be > 0 (got 0)"),
        ("FILL_MODEL_IMPACT_EXPONENT", "0.5", "FILL_MODEL_IMPACT_EXPONENT: must be >= 1 (got 0.5)"),
        ("FILL_MODEL_ENABLE", "maybe", None),
        ("UPBIT_LATENCY_MS", "inf", "UPBIT_LATENCY_MS: must be a finite number (got inf)"),
        ("UPBIT_LATENCY_MS", "", "UPBIT_LATENCY_MS: must be a number (got '')"),
        ("BINANCE_REST_URL", "wss://api.binance.com", None),
        ("BINANCE_WS_URL", "wss://", None),
        ("SYMBOLS", "BTC,ET H", None),
        ("SYMBOL_ALIASES", "BTC", None),
        ("SYMBOL_ALIASES", "BTC=X,BTC=Y", None),
        ("LOT_SIZES", "BTC=0", None),
        ("LOT_SIZES", "BTC=nan", None),
        ("SEED", "-3", "SEED: must be >= 0 (got -3)"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str | None
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert info.value.variable == name
    assert "\n" not in message and "pydantic" not in message and "http://errors" not in message
    assert message.endswith(")")
    if expected is not None:
        assert message == expected


def test_invalid_value_in_file_and_override(tmp_path: Path) -> None:
    write(tmp_path / ".env.paper", "SETTLE_MS=0\n")
    with pytest.raises(SettingsError, match=r"^SETTLE_MS: must be >= 1 \(got 0\)$"):
        Settings.from_env()
    # An override replaces the bad file value.
    assert Settings.from_env({"settle_ms": 100}).settle_ms == 100
    with pytest.raises(SettingsError, match=r"^FILL_MODEL_SLIPPAGE_ALPHA: must be >= 0 \(got -1\)"):
        Settings.from_env({"settle_ms": 100, "fill_model_slippage_alpha": -1})


def test_several_errors_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPN_SIZE", "0")
    monkeypatch.setenv("STALE_MS", "x")
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    message = str(info.value)
    assert message.startswith("TOPN_SIZE: must be >= 1 (got 0)")
    assert "STALE_MS" in message and "\n" not in message


def test_value_with_newline_is_shown_on_one_line() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"upbit_rest_url": "https://a\nb"})
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("UPBIT_REST_URL: must start with http:// or https://")


def test_settings_error_pickles() -> None:
    err = SettingsError("TOPN_SIZE: must be >= 1 (got 0)")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.variable == "TOPN_SIZE"


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("NO", False)],
)
def test_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("FILL_MODEL_PARTIAL_ENABLE", raw)
    assert Settings.from_env().fill_model_partial_enable is expected


def test_lists_and_maps_from_strings(tmp_path: Path) -> None:
    write(
        tmp_path / ".env.paper",
        "SYMBOLS= btc, ETH ,,xrp,BTC\n"
        "SYMBOL_DENY=luna\n"
        'LOT_SIZES="BTC=0.00001, eth=0.0001"\n'
        "SYMBOL_ALIASES=beam=beamx\n",
    )
    s = Settings.from_env()
    assert s.symbols == ("BTC", "ETH", "XRP")
    assert s.symbol_deny == ("LUNA",)
    assert s.lot_sizes == {"BTC": 0.00001, "ETH": 0.0001}
    assert s.symbol_aliases == {"BEAM": "BEAMX"}


def test_empty_list_and_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMBOLS", "")
    monkeypatch.setenv("LOT_SIZES", "")
    s = Settings.from_env()
    assert s.symbols == () and s.lot_sizes == {}


def test_lists_and_maps_from_parsed_overrides() -> None:
    s = Settings.from_env(
        {
            "symbols": ("btc", "eth"),
            "symbol_deny": ["doge"],
            "lot_sizes": {"btc": 0.001, "ETH": "0.01"},
            "symbol_aliases": {"beam": "BEAMX"},
        }
    )
    assert s.symbols == ("BTC", "ETH")
    assert s.symbol_deny == ("DOGE",)
    assert s.lot_sizes == {"BTC": 0.001, "ETH": 0.01}
    assert s.symbol_aliases == {"BEAM": "BEAMX"}
    assert Settings.from_env({"symbols": "SOL,ADA"}).symbols == ("SOL", "ADA")


def test_urls_are_normalised() -> None:
    s = Settings.from_env(
        {"upbit_rest_url": " http://localhost:8080/ ", "binance_ws_url": "ws://h"}
    )
    assert s.upbit_rest_url == "http://localhost:8080"
    assert s.binance_ws_url == "ws://h"


def test_fill_model_kind_values() -> None:
    for kind in FILL_MODEL_KINDS:
        assert Settings.from_env({"fill_model_kind": kind.upper()}).fill_model_kind == kind


def test_lot_size_for() -> None:
    s = Settings.from_env({"lot_sizes": "BTC=0.00001"})
    assert s.lot_size_for("btc", 95_000.0) == 0.00001
    assert s.lot_size_for("ETH", 3_000.0) == pytest.approx(0.0001)
    assert s.lot_size_for("DOGE", 0.1) == 10.0
    assert s.lot_size_for("X", 0.001) == 1000.0
    assert s.lot_size_for("Y", 1.0) == 1.0
    with pytest.raises(ValueError):
        s.lot_size_for("Z", 0.0)


@given(price=st.floats(min_value=1e-8, max_value=1e7), lot_value=st.floats(0.01, 100.0))
def test_derived_lot_is_a_power_of_ten_worth_at_most_lot_value(
    price: float, lot_value: float
) -> None:
    s = Settings.model_construct(lot_sizes={}, lot_value_usd=lot_value)
    lot = s.lot_size_for("ANY", price)
    exponent = round(math.log10(lot))
    assert lot == pytest.approx(10.0**exponent)
    assert lot * price <= lot_value * (1 + 1e-6)
    assert lot * 10 * price > lot_value * (1 - 1e-6)


# ------------------------------------------------------------------- pickling and effective()


def test_pickle_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMBOLS", "BTC,ETH")
    s = Settings.from_env({"lot_sizes": {"BTC": 0.001}, "seed": 3})
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert back.symbols == ("BTC", "ETH") and back.lot_sizes == {"BTC": 0.001}
    # Unpickling must not re-read the environment.
    monkeypatch.setenv("SYMBOLS", "XRP")
    assert pickle.loads(pickle.dumps(s)).symbols == ("BTC", "ETH")


def test_effective_is_json_and_round_trips() -> None:
    s = Settings.from_env(
        {"symbols": "BTC,ETH", "lot_sizes": "BTC=0.001", "symbol_aliases": "A=B", "seed": 9}
    )
    eff = s.effective()
    assert set(eff) == set(FIELDS)
    text = json.dumps(eff, allow_nan=False)
    back = Settings.from_env(json.loads(text))
    assert back == s
    assert back.effective() == eff


def test_effective_never_contains_secret_like_names() -> None:
    for name in Settings.from_env().effective():
        assert not re.search("key|secret|token|password", name)


# ------------------------------------------------------------------- the committed .env.paper


def committed_lines() -> dict[str, str]:
    text = (ROOT / ".env.paper").read_text(encoding="utf-8")
    documented: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            assert match.group(1) not in documented, f"{match.group(1)} documented twice"
            documented[match.group(1)] = match.group(2)
    return documented


def test_committed_env_paper_parses_to_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env(env_file=ROOT / ".env.paper") == Settings.from_env()
    monkeypatch.chdir(ROOT)
    assert Settings.from_env() == Settings.from_env(env_file=ROOT / ".env.paper")


def test_committed_env_paper_documents_every_field() -> None:
    documented = committed_lines()
    assert set(documented) == set(ENV_NAMES)
    text = (ROOT / ".env.paper").read_text(encoding="utf-8")
    for line in text.splitlines():
        # Everything is commented out: defaults live in code.
        assert not line.strip() or line.startswith("#"), line
    setting = re.compile(r"# [A-Z][A-Z0-9_]*=.*")
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if setting.fullmatch(line):
            # Each setting line follows its one-line explanation.
            explanation = lines[index - 1]
            assert explanation.startswith("# ") and not setting.fullmatch(explanation), line
            assert not explanation.startswith("# ----"), line


def test_documented_values_are_the_code_defaults(tmp_path: Path) -> None:
    uncommented = "\n".join(f"{name}={value}" for name, value in committed_lines().items())
    path = write(tmp_path / "uncommented.env", uncommented + "\n")
    assert Settings.from_env(env_file=path) == Settings.from_env()
