"""Benchmark: the gate, the repair and the migration commands at 100,000 and 1,000,000 trades.

    python tests/bench/bench.py                      # prints a table
    python tests/bench/bench.py --json bench.json    # and writes the figures
    python tests/bench/bench.py --sizes 100000 --repeat 1   # a quick look
    python tests/bench/bench.py --sizes 1000000 --short-share 0.2   # 20 % of new positions short

``--short-share`` (and ``--flip-share``) generate the sessions with short lots (and flips stored as
two trades), as the fixtures' options of the same names; the defects are then injected on either
side. The figures record both shares.

For each size it generates (with the toolkit's fixtures) a clean session and a session with 1 % of
its trades' worth of defects spread over the rules, all over 2,000 tickers, then measures, each as
the median of ``--repeat`` runs and as a ratio to the floor:

- the floor: ``SELECT count(*), sum(quantity*price) FROM trades`` on the same file, plain sqlite3;
- ``integrity check`` (all rules), wall time and peak RSS, as a subprocess;
- ``integrity repair --apply --yes`` of the defective session (a fresh copy per run), wall and RSS;
- ``migrate status`` on the four files, and ``migrate upgrade`` from nothing, wall time.

Plain Python, no extra dependencies. Not collected by the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Defects per 1,000,000 trades (scaled to the size): 1 % of the trades' worth, over all rules
#: whose defects a session can carry. sqlite_quick_check is left out: a damaged file makes every
#: rule reading it skip, which would measure nothing.
DEFECTS_PER_MILLION = {
    "unlinked_closes": 2500,
    "realized_pnl_mismatch": 1500,
    "lot_status_inconsistent": 1500,
    "opening_leg_with_pnl": 1000,
    "order_fill_mismatch": 1500,
    "trade_row_invalid": 500,
    "foreign_key_violations": 800,
    "position_ledger_mismatch": 400,
    "orphaned_sells": 100,
    "snapshot_equity_mismatch": 20,
    "ml_orphan_rows": 20,
    "qtable_unsafe_keys": 10,
    "schema_drift": 3,
    "ensemble_weights_sum": 2,
    "rl_state_missing_avg_reward": 2,
    "bankroll_mismatch": 1,
}


def _tool(name: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", "toolkit", name]


#: The commands run as installed: with their bytecode cached (a PYTHONDONTWRITEBYTECODE in the
#: caller's environment would make every start-up compile the toolkit again).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _run(cmd: list[str], *, cwd: Path | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB, exit code of one subprocess."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed with exit {proc.returncode}: {err.strip()[-500:]}")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def _median(runs: list[tuple[float, float, int]]) -> dict:
    return {"seconds": statistics.median(r[0] for r in runs), "peak_rss_mb": max(r[1] for r in runs),
            "runs": [round(r[0], 4) for r in runs], "exit_code": runs[-1][2]}


def _floor(path: Path, repeat: int) -> float:
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*), sum(quantity * price) FROM trades").fetchone()  # warm the cache
        times = []
        for _ in range(max(repeat, 5)):
            started = time.perf_counter()
            conn.execute("SELECT count(*), sum(quantity * price) FROM trades").fetchone()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        conn.close()


def _generate(directory: Path, trades: int, tickers: int, defects: dict[str, int], *, short_share: float = 0.0,
              flip_share: float = 0.0) -> float:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "toolkit.fixtures", "generate", "--data-dir", str(directory), "--trades", str(trades),
           "--tickers", str(tickers), "--seed", "1", "--quiet"]
    if short_share:
        cmd += ["--short-share", repr(short_share)]
    if flip_share:
        cmd += ["--flip-share", repr(flip_share)]
    for rule, count in defects.items():
        cmd += ["--defect", f"{rule}={count}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_ENV)
    return time.perf_counter() - started


def _short_trades(path: Path) -> float:
    """The share of the session's trades on the short side (short sales and the BUYs covering them)."""
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        short, total = conn.execute("SELECT sum((action = 'SELL') = (is_close = 0)), count(*) FROM trades").fetchone()
        return (short or 0) / total if total else 0.0
    finally:
        conn.close()


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.suffix == ".db":
            shutil.copy2(item, dst / item.name)


def bench_size(trades: int, tickers: int, repeat: int, work: Path, say, *, short_share: float = 0.0,
               flip_share: float = 0.0) -> dict:
    scale = trades / 1_000_000
    defects = {rule: max(1, round(n * scale)) for rule, n in DEFECTS_PER_MILLION.items()}
    defects["bankroll_mismatch"] = 1
    if short_share or flip_share:
        # With shorts allowed an oversell opens a short lot: orphaned sells exist only in long-only ledgers.
        defects.pop("orphaned_sells")
    clean, dirty = work / f"clean-{trades}", work / f"defective-{trades}"
    shares = {"short_share": short_share, "flip_share": flip_share}
    say(f"{trades:,} trades: generating the clean session")
    gen_clean = _generate(clean, trades, tickers, {}, **shares)
    say(f"{trades:,} trades: generating the defective session ({sum(defects.values()):,} defects)")
    gen_dirty = _generate(dirty, trades, tickers, defects, **shares)
    short_trades = _short_trades(clean / "trading.db")
    floor = _floor(clean / "trading.db", repeat)
    integrity = _tool("integrity")

    say(f"{trades:,} trades: integrity check (clean) x{repeat}")
    _run(integrity + ["--data-dir", str(clean), "check"])  # warm the OS cache once
    check_clean = _median([_run(integrity + ["--data-dir", str(clean), "check"]) for _ in range(repeat)])
    say(f"{trades:,} trades: integrity check (defective) x{repeat}")
    check_dirty = _median([_run(integrity + ["--data-dir", str(dirty), "check"]) for _ in range(repeat)])
    say(f"{trades:,} trades: integrity repair --apply x{repeat}")
    repairs = []
    for n in range(repeat):
        target = work / f"repair-{trades}-{n}"
        _copy(dirty, target)
        repairs.append(_run(integrity + ["--data-dir", str(target), "repair", "--apply", "--yes"]))
        after = _run(integrity + ["--data-dir", str(target), "repair"])  # a second plan must change nothing
        shutil.rmtree(target)
        if after[2] != 0:
            raise SystemExit("the second repair plan did not succeed")
    repair = _median(repairs)
    result = {
        "trades": trades,
        "tickers": tickers,
        "short_share": short_share,
        "flip_share": flip_share,
        "short_trades": short_trades,
        "defects": sum(defects.values()),
        "generate_seconds": {"clean": round(gen_clean, 2), "defective": round(gen_dirty, 2)},
        "floor_seconds": floor,
        "check_clean": check_clean,
        "check_defective": check_dirty,
        "repair_apply": repair,
    }
    for name in ("check_clean", "check_defective", "repair_apply"):
        result[name]["ratio_to_floor"] = result[name]["seconds"] / floor
    return result


def bench_migrate(work: Path, data_dir: Path, repeat: int) -> dict:
    migrate = _tool("migrate")
    _run(migrate + ["--data-dir", str(data_dir), "status"])  # warm: bytecode written, files in the OS cache
    status = _median([_run(migrate + ["--data-dir", str(data_dir), "status"]) for _ in range(max(repeat, 11))])
    upgrades = []
    for n in range(max(repeat, 5)):
        fresh = work / f"fresh-{n}"
        upgrades.append(_run(migrate + ["--data-dir", str(fresh), "upgrade"]))
        shutil.rmtree(fresh)
    return {"status": status, "upgrade_from_nothing": _median(upgrades)}


TARGETS = {
    "check ratio to floor (1M)": ("check_clean", "ratio_to_floor", 25.0),
    "check peak RSS MB (1M)": ("check_clean", "peak_rss_mb", 250.0),
    "repair ratio to floor (1M)": ("repair_apply", "ratio_to_floor", 50.0),
    "repair peak RSS MB (1M)": ("repair_apply", "peak_rss_mb", 300.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated trade counts [100000,1000000]")
    parser.add_argument("--tickers", type=int, default=2000, help="tickers per session [2000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is reported) [3]")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this JSON file")
    parser.add_argument("--workdir", help="where to put the sessions (default: a temporary directory, removed)")
    parser.add_argument("--short-share", type=float, default=0.0,
                        help="share of new positions that are short, 0..1 (the fixtures' --short-share) [0]")
    parser.add_argument("--flip-share", type=float, default=0.0,
                        help="share of closes that flip the position, stored as two trades, 0..1 [0]")
    args = parser.parse_args(argv)
    for name in ("short_share", "flip_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    def say(message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="toolkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = [bench_size(n, args.tickers, args.repeat, work, say, short_share=args.short_share,
                              flip_share=args.flip_share) for n in sizes]
        say("migrate status / upgrade from nothing")
        migrate = bench_migrate(work, work / f"clean-{sizes[-1]}", args.repeat)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    figures = {
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "repeat": args.repeat,
        "sizes": results,
        "migrate": migrate,
        "seconds": round(time.perf_counter() - started, 1),
    }
    big = results[-1]
    if len(results) > 1:
        figures["check_scaling"] = big["check_clean"]["seconds"] / results[0]["check_clean"]["seconds"]
    verdicts = []
    if big["trades"] >= 1_000_000:
        for label, (section, key, limit) in TARGETS.items():
            verdicts.append((label, big[section][key], limit))
        if "check_scaling" in figures:
            verdicts.append(("check 100k -> 1M multiplier", figures["check_scaling"], 11.0))
    verdicts.append(("migrate status seconds", migrate["status"]["seconds"], 0.12))
    verdicts.append(("migrate upgrade from nothing seconds", migrate["upgrade_from_nothing"]["seconds"], 0.3))
    figures["targets"] = [{"target": label, "value": value, "limit": limit, "met": value <= limit}
                          for label, value, limit in verdicts]

    rows = []
    for r in results:
        for name in ("check_clean", "check_defective", "repair_apply"):
            rows.append((f"{r['trades']:,}", name.replace("_", " "), r[name]["seconds"], r[name]["ratio_to_floor"],
                         r[name]["peak_rss_mb"]))
    if args.short_share or args.flip_share:
        print(f"short share {args.short_share:g}, flip share {args.flip_share:g}: "
              + ", ".join(f"{r['trades']:,} trades {r['short_trades']:.1%} on the short side" for r in results))
    print(f"{'trades':>10}  {'measure':<16} {'seconds':>9} {'x floor':>8} {'peak MB':>8}")
    for r in results:
        print(f"{r['trades']:>10,}  {'floor':<16} {r['floor_seconds']:>9.4f} {1.0:>8.1f} {'':>8}")
    for trades, name, seconds, ratio, rss in rows:
        print(f"{trades:>10}  {name:<16} {seconds:>9.3f} {ratio:>8.1f} {rss:>8.1f}")
    print(f"{'':>10}  {'migrate status':<16} {migrate['status']['seconds']:>9.3f}")
    print(f"{'':>10}  {'upgrade (new)':<16} {migrate['upgrade_from_nothing']['seconds']:>9.3f}")
    print()
    for item in figures["targets"]:
        print(f"{'met ' if item['met'] else 'MISS'}  {item['target']:<38} {item['value']:>9.3f}  (limit {item['limit']})")
    print(f"\nbenchmark took {figures['seconds']:.0f} s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
