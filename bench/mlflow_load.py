"""MLflow under the write load of a sweep: the team server (PostgreSQL + basic-auth) against the
old single-worker SQLite server, with N trials writing at once.

Why: the old cluster config (``mlflow server`` on SQLite, one worker, no auth) deadlocked by hand
at ~24+ concurrent writers: points were lost and runs left RUNNING. ``supcon-sweep cluster
server`` replaced it (``orchestrator/mlflow_server.py``); this checks that it holds where the
old one broke, and shows what the old one does under the same load.

Each case starts a fresh server in a fresh temporary folder on free ports of 127.0.0.1 (the
PostgreSQL one as ``supcon-sweep cluster server``, stopped with SIGTERM; the SQLite one as the
old ``mlflow server --workers 1`` command line), creates one sweep parent run, then runs N
writers shaped like trials, through the code trials use (``Tracking.open_trial`` and its
``TrialTracker``, with the HTTP timeout and retries a trial's rank 0 sets): open a nested run,
``--epochs`` synchronous ``log_metrics`` calls of ``--metrics`` metrics each, 3 small
artifacts, ``finish()``. Writers stop sending at ``--deadline`` (they still finish their run);
one still busy ``--grace`` seconds later is killed and counted as unfinished.

Writers are threads spread over ``min(N, --processes)`` spawned processes (default 4), each
thread with its own ``Tracking`` (its own ``MlflowClient``). A process per writer, as on a real
cluster, costs ~2 s of CPU and ~150 MB each to import MLflow, which at N = 64 on a 2-core
machine would swamp the run; one process would put every writer behind one GIL. A writer spends
a few ms of CPU per call against a server latency of 0.2-5 s, so 16 threads share a GIL
without measurable contention, and 4 processes measured the same throughput as 8 at N = 64 for
half the start-up. On 2 cores the writers and the server still share the CPUs: latencies here
are an upper bound of a cluster head's; the comparison between the servers is what counts.

Reported per case: points sent (handed to ``log_metrics``) and points stored (an exact
``count(*)`` of the ``metrics`` table for the sweep's trial runs, read from the database
itself), exceptions raised to the writers, outages the trackers buffered through, trial runs
left RUNNING, p50/p99 latency of ``log_metrics``, wall time from the writers' start to the last
one's ``finish``.

    python bench/mlflow_load.py                  # 8 32 64 writers, 60 epochs (~15 min, 2 cores)
    python bench/mlflow_load.py --writers 16 --epochs 20 --backends postgresql

60 epochs, not 200: on 2 cores the PostgreSQL server sustains ~30 log_metrics calls/s with 64
writers, so 200 epochs would run into the deadline at 32 and 64 writers and the whole run past
20 minutes; 60 lets every PostgreSQL case finish whole within it.

Aim: nothing lost on PostgreSQL at the largest N (the last line says).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing as mp
import os
import queue as queue_mod
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import mlflow_server as srv
from orchestrator.tracking import Tracking

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"postgresql": "PostgreSQL+auth", "sqlite": "SQLite, 1 worker"}
EXPERIMENT = "mlflow-load"
ARTIFACTS = 3
# What a trial's rank 0 sets before it opens its run (orchestrator/train/worker.py,
# make_reporter): fail fast, and let the TrialTracker buffer and retry.
TRIAL_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
QUIET_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # no "View run at" per run
READY_S = 300  # a server's start, a writer process's imports
STOP_S = 30  # a server's orderly stop before it is killed
LINGER_S = 10  # how long its other processes may take to follow it


# -- Servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A running tracking server: its URL, its database (for the exact counts), the passfile
    the database's password is in and the credentials writers need (empty without auth)."""

    url: str
    db_uri: str
    passfile: Path | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    leftovers: list[str] = field(default_factory=list)  # filled on stop
    folder: Path | None = None  # the server's folder (its secrets and logs)
    pid: int = 0  # the process started (``cluster server``'s supervisor)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _wait_ready(proc: subprocess.Popen, ready, what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.returncode} while starting:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {READY_S} s:\n{_tail(log)}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen, sig: int, server: Server | None) -> None:
    """``sig`` to the process we started, wait; whatever of its session (it runs in a session
    of its own) is still alive ``LINGER_S`` later is killed and named in ``server.leftovers``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            if server is not None:
                server.leftovers.append(f"pid {proc.pid} still running {STOP_S} s after signal")
            proc.kill()
            proc.wait()
    until = time.monotonic() + LINGER_S
    while (left := _session_pids(proc.pid)) and time.monotonic() < until:
        time.sleep(0.5)
    if left and server is not None:
        names = sorted({_name(pid) for pid in left})
        server.leftovers.append(
            f"{len(left)} processes of its session alive {LINGER_S} s after it exited, killed: "
            + ", ".join(names)
        )
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _name(pid: int) -> str:
    """A short name of process ``pid``: its program, or the module it runs with ``-m``."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        args = [a.decode(errors="replace") for a in argv if a]
        if not args:
            return "?"
        if Path(args[0]).name.startswith("python") and "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        return Path(args[0]).name
    return "?"


def _session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (the server's own, started with a new session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: the session id
                pids.append(int(stat.parent.name))
    return pids


def _start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A server in a session of its own (so that :func:`_stop` finds all of it), output to
    ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@contextlib.contextmanager
def cluster_server(folder: Path) -> Iterator[Server]:
    """``supcon-sweep cluster server`` (PostgreSQL of its own, basic-auth) in ``folder``, on free
    ports; stopped with SIGTERM (then killed if it lingers) when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    port, pg_port = srv.free_port(), srv.free_port()
    data = folder / "server"
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "orchestrator.cli", "cluster", "server", "--folder", str(data)]
    cmd += ["--port", str(port), "--pg-port", str(pg_port)]
    proc = _start(cmd, ROOT, log)
    server = None
    try:
        _wait_ready(proc, lambda: "MLflow ready at" in _tail(log, 100_000), "cluster server", log)
        creds = srv.read_env_file(data / "secrets" / "sweep.env")
        server = Server(
            url=f"http://127.0.0.1:{port}",
            db_uri=f"postgresql+psycopg2://{srv.ROLE}@127.0.0.1:{pg_port}/{srv.TRACKING_DB}",
            passfile=data / "secrets" / "pgpass",
            env={k: creds[k] for k in (srv.USER_VAR, srv.PASSWORD_VAR)},
            folder=data,
            pid=proc.pid,
        )
        yield server
    finally:
        _stop(proc, signal.SIGTERM, server)


@contextlib.contextmanager
def sqlite_server(folder: Path) -> Iterator[Server]:
    """The old cluster config: ``mlflow server`` on SQLite, one worker, no auth."""
    folder.mkdir(parents=True, exist_ok=True)
    port = srv.free_port()
    db = folder / "mlflow.db"
    log = folder / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server"]
    cmd += ["--backend-store-uri", f"sqlite:///{db}", "--workers", "1"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--artifacts-destination", str(folder / "mlartifacts"), "--serve-artifacts"]
    proc = _start(cmd, folder, log)
    server = None
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, lambda: srv.http_ok(f"{url}/health"), "mlflow server (SQLite)", log)
        server = Server(url=url, db_uri=f"sqlite:///{db}")
        yield server
    finally:
        _stop(proc, signal.SIGTERM, server)


SERVERS = {"postgresql": cluster_server, "sqlite": sqlite_server}


# -- The exact count --------------------------------------------------------------------------


@dataclass
class Stored:
    """What the database holds for one sweep's trial runs."""

    points: int
    runs: int
    running: int


def count_stored(db_uri: str, parent_run_id: str, passfile: Path | None = None) -> Stored:
    """Exact counts from the tracking database itself (not through MLflow): metric points of
    the trial runs nested under ``parent_run_id``, those runs, and those still RUNNING."""
    from sqlalchemy import create_engine, text

    args = {"passfile": str(passfile)} if passfile else {}
    engine = create_engine(db_uri, connect_args=args)
    trials = "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = :parent"
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql), {"parent": parent_run_id}).scalar_one())

            return Stored(
                points=one(f"SELECT count(*) FROM metrics WHERE run_uuid IN ({trials})"),
                runs=one(f"SELECT count(*) FROM runs WHERE run_uuid IN ({trials})"),
                running=one(
                    f"SELECT count(*) FROM runs WHERE status = 'RUNNING' AND run_uuid IN ({trials})"
                ),
            )
    finally:
        engine.dispose()


# -- The writers ------------------------------------------------------------------------------


@dataclass
class Load:
    """What the writers did: points handed to ``log_metrics``, exceptions raised to them,
    outages their trackers buffered through, latencies, and who was stopped or killed."""

    parent_run_id: str
    writers: int
    sent: int = 0
    expected: int = 0  # points of the full run, had no deadline stopped it
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    buffered: int = 0
    calls: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    wall_s: float = 0.0
    stopped: int = 0  # writers the deadline stopped before their last epoch
    unfinished: int = 0  # writers still busy at deadline + grace (then killed), or crashed

    @property
    def deadline_hit(self) -> bool:
        return self.stopped > 0 or self.unfinished > 0


class _Buffered(logging.Handler):
    """Counts the TrialTracker's "buffering metrics" warnings (an outage it rode through)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "buffering" in record.getMessage():
            with self.lock_:
                self.count += 1


def _artifacts(folder: Path, index: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in ("scores.txt", "config.yaml", "summary.json")[:ARTIFACTS]:
        path = folder / name
        path.write_text(f"writer {index}: {name}\n" + "x" * 1000 + "\n")
        files.append(path)
    return files


@dataclass
class _Writer:
    """One writer's record, filled as it goes (read when its process reports, done or not)."""

    index: int
    latencies: list[float] = field(default_factory=list)  # ms, one per log_metrics call
    errors: list[str] = field(default_factory=list)
    stopped: bool = False  # the deadline stopped it before its last epoch
    done: bool = False  # finish() returned (or raised)


def _write(me: _Writer, target, epochs: int, metrics: int, deadline: float, sent, work: Path):
    """One trial-shaped writer: open the run, ``epochs`` log_metrics calls, artifacts, finish."""
    rng = random.Random(me.index)
    try:
        tracker = Tracking(target).open_trial(f"writer-{me.index:03d}", {"writer": me.index})
    except Exception as err:
        me.errors.append(f"open_trial: {err!r}"[:300])
        return
    for step in range(epochs):
        if time.time() >= deadline:
            me.stopped = True
            break
        values = {f"load/m{k:02d}": rng.random() for k in range(metrics)}
        sent[me.index] += metrics  # handed to the tracker: from here on it must not be lost
        start = time.perf_counter()
        try:
            tracker.log_metrics(values, step)
        except Exception as err:
            me.errors.append(f"log_metrics: {err!r}"[:300])
        me.latencies.append((time.perf_counter() - start) * 1e3)
    try:
        tracker.log_artifacts(_artifacts(work / f"writer-{me.index:03d}", me.index))
    except Exception as err:
        me.errors.append(f"log_artifacts: {err!r}"[:300])
    try:
        tracker.finish()
    except Exception as err:
        me.errors.append(f"finish: {err!r}"[:300])


def _writer_process(target, indices, epochs, metrics, gate, deadline, sent, results, work):
    """A spawned process: its writers as threads, started together with the other processes
    once all have imported MLflow (``gate``: a barrier, an event to start, an event to give
    up). Puts one message on ``results`` when its writers are done or it is told to give up:
    (indices, [_Writer], buffered outages); a writer still busy then has ``done`` False."""
    for key, value in TRIAL_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    counter = _Buffered()
    runs_log = logging.getLogger("orchestrator.tracking.runs")
    runs_log.addHandler(counter)
    runs_log.propagate = False  # counted, not printed N times
    writers = [_Writer(i) for i in indices]
    ready, go, give_up = gate
    try:
        ready.wait(READY_S)
        if not go.wait(READY_S):
            raise TimeoutError("never told to start")
        at = deadline.value

        def run(me: _Writer) -> None:
            try:
                _write(me, target, epochs, metrics, at, sent, work)
            except BaseException as err:
                me.errors.append(f"writer: {err!r}"[:300])
            me.done = True

        threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in writers]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and not give_up.wait(0.5):
            pass
    except BaseException as err:
        writers[0].errors.append(f"process: {err!r}"[:300])
    snapshot = [
        _Writer(w.index, list(w.latencies), list(w.errors), w.stopped, w.done) for w in writers
    ]
    results.put((list(indices), snapshot, counter.count))
    results.close()
    results.join_thread()
    os._exit(0)  # writers still blocked in a request die with the process


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run_load(
    uri: str,
    writers: int,
    *,
    epochs: int = 60,
    metrics: int = 20,
    deadline: float = 180.0,
    grace: float = 60.0,
    processes: int = 4,
    env: Mapping[str, str] | None = None,
    work: Path | None = None,
) -> Load:
    """``writers`` trial-shaped writers against the server at ``uri`` under one new sweep run.
    ``env``: the writers' credentials (``MLFLOW_TRACKING_USERNAME``/``..._PASSWORD``), set in
    this process for the run and inherited by the spawned writers. ``work``: where the
    artifacts are written (default a temporary folder)."""
    ctx = mp.get_context("spawn")
    procs = max(1, min(writers, processes))
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlflow_load_")))
        stack.enter_context(srv.environ({**TRIAL_HTTP_ENV, **QUIET_ENV, **(env or {})}))
        sweep = Tracking.at(uri, EXPERIMENT).start_sweep(
            f"load-{writers}",
            searcher="load",
            params={"writers": writers, "epochs": epochs, "metrics": metrics},
            tags={},
            space_text=None,
        )
        load = Load(sweep.run_id, writers, expected=writers * epochs * metrics)
        ready, go, give_up = ctx.Barrier(procs + 1), ctx.Event(), ctx.Event()
        at = ctx.Value("d", 0.0, lock=False)
        sent = ctx.Array("q", writers, lock=False)
        results = ctx.Queue()
        groups = [list(range(writers))[p::procs] for p in range(procs)]
        children = [
            ctx.Process(
                target=_writer_process,
                args=(sweep.target, g, epochs, metrics, (ready, go, give_up), at, sent, results),
                kwargs={"work": work},
                daemon=True,
            )
            for g in groups
        ]
        for child in children:
            child.start()
        latencies: list[float] = []
        try:
            ready.wait(READY_S)  # every process has imported MLflow: the clock starts
            at.value = time.time() + deadline
            go.set()
            start = time.monotonic()
            hard = start + deadline + grace
            pending = {tuple(g) for g in groups}
            while pending:
                if time.monotonic() > hard and not give_up.is_set():
                    give_up.set()  # report what you have; busy writers count as unfinished
                    hard += 30
                elif time.monotonic() > hard:
                    break
                try:
                    indices, out, buffered = results.get(timeout=0.5)
                except queue_mod.Empty:
                    if all(not c.is_alive() for c in children):
                        break  # every process gone, some without a word
                    continue
                pending.discard(tuple(indices))
                load.buffered += buffered
                for me in out:
                    latencies += me.latencies
                    load.errors += len(me.errors)
                    load.error_samples += me.errors[: max(0, 5 - len(load.error_samples))]
                    load.stopped += me.stopped
                    load.unfinished += not me.done
                    if me.done:
                        load.wall_s = max(load.wall_s, time.monotonic() - start)
            load.unfinished += sum(len(g) for g in pending)  # their process never reported
            if load.unfinished:
                load.wall_s = time.monotonic() - start
        finally:
            give_up.set()
            for child in children:
                child.join(10)
                if child.is_alive():
                    child.kill()
                    child.join()
        load.sent = sum(sent)
        load.calls = len(latencies)
        load.p50_ms = _percentile(latencies, 50)
        load.p99_ms = _percentile(latencies, 99)
        with contextlib.suppress(Exception):  # the counts say what a stuck server kept
            sweep.finish()
    return load


# -- Cases and the report ---------------------------------------------------------------------


@dataclass
class Case:
    backend: str
    writers: int
    load: Load | None = None
    stored: Stored | None = None
    leftovers: list[str] = field(default_factory=list)
    failure: str | None = None
    start_s: float = 0.0  # the server's start
    stop_s: float = 0.0  # counting, then the server's stop

    @property
    def lost(self) -> int | None:
        if self.load is None or self.stored is None:
            return None
        return self.load.sent - self.stored.points


def run_case(backend: str, writers: int, base: Path, **load_args) -> Case:
    """A fresh ``backend`` server in a folder under ``base``, the load, the exact counts."""
    case = Case(backend, writers)
    folder = Path(tempfile.mkdtemp(prefix=f"{backend}-{writers}-", dir=base))
    t0 = time.monotonic()
    try:
        with SERVERS[backend](folder) as server:
            case.start_s = time.monotonic() - t0
            case.load = run_load(
                server.url, writers, env=server.env, work=folder / "work", **load_args
            )
            t0 = time.monotonic()
            case.stored = count_stored(server.db_uri, case.load.parent_run_id, server.passfile)
        case.stop_s = time.monotonic() - t0
        case.leftovers = server.leftovers
    except Exception as err:
        case.failure = f"{type(err).__name__}: {err}"[:500]
    return case


def _fmt(value, spec: str = "d") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


ROWS = [
    ("points sent", lambda c: _fmt(c.load.sent)),
    ("points stored (DB count)", lambda c: _fmt(c.stored.points)),
    ("points lost", lambda c: _fmt(c.lost)),
    ("client errors", lambda c: _fmt(c.load.errors)),
    ("outages buffered", lambda c: _fmt(c.load.buffered)),
    ("trial runs / left RUNNING", lambda c: f"{c.stored.runs} / {c.stored.running}"),
    ("log_metrics p50 ms", lambda c: _fmt(c.load.p50_ms, ".0f")),
    ("log_metrics p99 ms", lambda c: _fmt(c.load.p99_ms, ".0f")),
    ("calls/s", lambda c: _fmt(c.load.calls / c.load.wall_s if c.load.wall_s else None, ".0f")),
    ("wall s", lambda c: _fmt(c.load.wall_s, ".1f")),
    (
        "deadline hit: stopped / killed",
        lambda c: f"{c.load.stopped} / {c.load.unfinished}" if c.load.deadline_hit else "no",
    ),
]


def print_table(cases: list[Case], backends: list[str]) -> None:
    """Per N, one row per measure, the backends side by side."""
    width = 22
    for writers in sorted({c.writers for c in cases}):
        row = {c.backend: c for c in cases if c.writers == writers}
        print(
            f"\n{writers} writers".ljust(33) + "".join(BACKENDS[b].rjust(width) for b in backends)
        )
        for label, cell in ROWS:
            line = f"  {label:<30}"
            for b in backends:
                case = row.get(b)
                text = "-"
                if case is not None and case.failure:
                    text = "FAILED"
                elif case is not None and case.load is not None and case.stored is not None:
                    text = cell(case)
                line += text.rjust(width)
            print(line)
    for case in cases:
        name = f"{BACKENDS[case.backend]}, {case.writers} writers"
        if case.failure:
            print(f"\n{name}: failed: {case.failure}")
        if case.load and case.load.error_samples:
            print(f"\n{name}: first client errors:")
            for text in dict.fromkeys(case.load.error_samples):
                print(f"  {text}")
        if case.stored and case.stored.runs > case.writers:
            print(
                f"\n{name}: {case.stored.runs - case.writers} trial runs more than writers: "
                "most likely open_trial's retry after a client timeout, while the first "
                "create_run still waited in the server"
            )
        for text in case.leftovers:
            print(f"\n{name}: server stop: {text}")


def verdict(cases: list[Case]) -> tuple[bool, str]:
    """(ok, the line): whether PostgreSQL lost anything at the largest N."""
    pg = [c for c in cases if c.backend == "postgresql"]
    if not pg:
        return True, "PostgreSQL not measured"
    case = max(pg, key=lambda c: c.writers)
    if case.failure or case.load is None or case.stored is None:
        return False, f"PostgreSQL at {case.writers} writers: the case failed ({case.failure})"
    load, stored = case.load, case.stored
    ok = (
        case.lost == 0
        and load.errors == 0
        and stored.running == 0
        and stored.runs == case.writers
        and load.unfinished == 0
    )
    what = (
        f"stored {stored.points} of {load.sent} points sent, {load.errors} client errors, "
        f"{stored.running} of {stored.runs} trial runs left RUNNING"
        + (f", {load.unfinished} writers killed" if load.unfinished else "")
        + (", deadline hit" if load.deadline_hit else "")
    )
    if ok:
        return True, f"PostgreSQL at {case.writers} writers: nothing lost ({what})"
    return False, f"PostgreSQL at {case.writers} writers: LOST OR BROKEN ({what})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--epochs", type=int, default=60, help="log_metrics calls per writer")
    parser.add_argument("--metrics", type=int, default=20, help="metrics per log_metrics call")
    parser.add_argument(
        "--deadline", type=float, default=180, help="seconds after which writers stop sending"
    )
    parser.add_argument(
        "--grace", type=float, default=60, help="seconds after the deadline to finish the runs"
    )
    parser.add_argument("--processes", type=int, default=4, help="writer processes (at most)")
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    args = parser.parse_args(argv)
    print(
        f"{args.epochs} epochs x {args.metrics} metrics per writer, deadline {args.deadline:.0f} s "
        f"(+{args.grace:.0f} s to finish), writers in up to {args.processes} processes, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    start = time.monotonic()
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench_mlflow_load_") as tmp:
        for writers in args.writers:
            for backend in args.backends:
                t0 = time.monotonic()
                case = run_case(
                    backend,
                    writers,
                    Path(tmp),
                    epochs=args.epochs,
                    metrics=args.metrics,
                    deadline=args.deadline,
                    grace=args.grace,
                    processes=args.processes,
                )
                cases.append(case)
                status = case.failure or (
                    f"sent {case.load.sent}, stored {case.stored.points}, "
                    f"{case.load.errors} errors, {case.stored.running} RUNNING, "
                    f"server start {case.start_s:.0f} s, load {case.load.wall_s:.0f} s, "
                    f"count and stop {case.stop_s:.0f} s"
                )
                print(
                    f"  {BACKENDS[backend]}, {writers} writers: {status} "
                    f"(case {time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
    print_table(cases, args.backends)
    ok, line = verdict(cases)
    print(f"\ntotal {time.monotonic() - start:.0f} s")
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
