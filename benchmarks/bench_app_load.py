"""The app under load: do light requests stay fast while one client sends heavy files?

    python benchmarks/bench_app_load.py                    # 8 clients, 3 minutes per phase
    python benchmarks/bench_app_load.py --quick            # 20 s per phase, soak of 20
    python benchmarks/bench_app_load.py --soak-only --soak 200   # only the soak: 200 requests
    python benchmarks/bench_app_load.py --requests 3       # each file's cost, no server
    python benchmarks/bench_app_load.py --contention       # why requests run in processes

Starts ``python app.py`` (default settings but one, its own TMPDIR/GRADIO_TEMP_DIR) and drives
``/continue`` with gradio_client. Phases: *idle* (one light client alone), *light* (7 light
clients), *mixed* (the same 7 plus one client sending heavy files: 20,000 notes, a 2,000-bar
silence, 16 tracks, back to back), in ``--rounds`` interleaved rounds (outside load on a shared
machine drifts; each phase's rounds are pooled). Each client is a process of its own; the idle
client pauses 1 s (alone, its pause only sets the sample count). A light client is a person:
after each result it listens and thinks for ``--think`` seconds on average (uniform between half
and one and a half times that) before the next click; ``--think 0.5`` instead saturates the two
cores, which measures capacity rather than fairness. Reports failed light requests, light
latency p50/p95 per phase, the mixed/idle p95 ratio (target ≤ 2) and mixed/light-only, the
server's peak RSS (with its worker processes), the CPU seconds of the server, the light clients
and the heavy client per phase, and the temp folder size before and after the sessions close.
The soak sends N sequential requests with random settings and reports RSS and open files over
time. Then it waits until the temp folder is back to its size at start (the app runs with
``--keep-files-minutes 1`` so that this happens within minutes).
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mido

ROOT = Path(__file__).resolve().parents[1]
IDLE_THINK = 1.0  # seconds between the idle phase's requests


def _save(mid: mido.MidiFile, path: Path) -> Path:
    buf = io.BytesIO()
    mid.save(file=buf)
    path.write_bytes(buf.getvalue())
    return path


def make_files(folder: Path) -> tuple[Path, list[Path]]:
    """A 2-bar light prompt and three heavy ones."""

    def song(notes, gap=0, tracks=1, length=240):
        mid = mido.MidiFile(ticks_per_beat=480, type=1)
        for t in range(tracks):
            track = mido.MidiTrack()
            for i in range(notes):
                pitch = 48 + (i * 5 + t) % 36
                track.append(
                    mido.Message(
                        "note_on",
                        channel=t % 16,
                        note=pitch,
                        velocity=80,
                        time=gap if i == 1 else 0,
                    )
                )
                track.append(mido.Message("note_off", channel=t % 16, note=pitch, time=length))
            mid.tracks.append(track)
        return mid

    light = _save(song(16), folder / "light.mid")
    heavy = [
        _save(song(20_000, length=60), folder / "heavy_20k_notes.mid"),
        _save(song(3, gap=2000 * 1920), folder / "heavy_gap_2000_bars.mid"),
        _save(song(200, tracks=16, length=120), folder / "heavy_16_tracks.mid"),
    ]
    return light, heavy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the app's worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:  # the thread or process ended meanwhile
                continue
    return out


def proc_stat(pid: int) -> tuple[float, float, int]:
    """(RSS MB, peak RSS MB, open files) of ``pid`` and its worker processes, summed (the peak
    is the sum of each process's own peak: an upper bound of the peak they reached together)."""
    rss = peak = 0.0
    files = 0
    for p in tree(pid):
        try:
            fields = dict(
                line.partition(":")[::2]
                for line in Path(f"/proc/{p}/status").read_text().splitlines()
            )
            files += len(os.listdir(f"/proc/{p}/fd"))
        except FileNotFoundError:  # it ended meanwhile
            continue
        rss += int(fields["VmRSS"].split()[0]) / 1024
        peak += int(fields["VmHWM"].split()[0]) / 1024
    return rss, peak, files


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its worker processes."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


class Server:
    def __init__(self, args, tmp: Path) -> None:
        self.tmp = tmp / "server-tmp"
        self.tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(self.tmp), GRADIO_TEMP_DIR=str(self.tmp / "gradio"))
        self.port = free_port()
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), *args.app_args]
        cmd += ["--keep-files-minutes", str(args.keep_files_minutes)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(self.proc.stdout.read().decode()) from None
                time.sleep(1)
        raise SystemExit("the app did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def call(client, path: Path, rng: random.Random | None = None) -> tuple[float, str | None]:
    from gradio_client import handle_file

    kwargs = {"bars": 1, "seed": 1}
    if rng is not None:
        kwargs = {
            "bars": rng.randint(1, 4),
            "seed": rng.randint(0, 10_000),
            "temperature": rng.choice([0.8, 1.0, 1.2]),
            "num_samples": rng.randint(1, 2),
        }
    started = time.perf_counter()
    try:
        client.predict(midi=handle_file(str(path)), api_name="/continue", **kwargs)
        return time.perf_counter() - started, None
    except Exception as exc:  # counted, reported
        return time.perf_counter() - started, str(exc).splitlines()[0][:120]


def light_client(url: str, light: Path, k: int, think: float, stop: float, out) -> None:
    """A person: clicks, waits for the result, listens and thinks, clicks again."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    rng = random.Random(k)
    time.sleep(rng.uniform(0, think))  # people do not click in step
    while time.time() < stop:
        took, error = call(client, light)
        out.put(("light", took, error))
        time.sleep(rng.uniform(0.5 * think, 1.5 * think))  # listening, then the next click
    out.put(("cpu", own_cpu(), "light"))


def heavy_client(url: str, heavy: list[Path], stop: float, out) -> None:
    """A script sending heavy files back to back."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    i = 0
    while time.time() < stop:
        out.put(("heavy", *call(client, heavy[i % len(heavy)])))
        i += 1
    out.put(("cpu", own_cpu(), "heavy"))


def phase(
    server: Server,
    light: Path,
    heavy: list[Path],
    clients: int,
    with_heavy: bool,
    seconds: float,
    think: float,
    peak: list[float],
) -> dict:
    """One load phase. Every client is a process of its own, as real clients are other
    machines: in one process, the heavy client's 20 MB downloads would hold the interpreter
    lock that the light clients' timing threads need, and count against the server."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    out = context.Queue()
    stop = time.time() + seconds
    procs = [
        context.Process(target=light_client, args=(server.url, light, k, think, stop, out))
        for k in range(clients)
    ]
    if with_heavy:
        procs.append(context.Process(target=heavy_client, args=(server.url, heavy, stop, out)))
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    failures: list[str] = []
    heavy_done: list[tuple[float, str | None]] = []
    cpu = {"server": -cpu_seconds(server.proc.pid), "light": 0.0, "heavy": 0.0}

    def drain() -> None:
        while not out.empty():
            kind, seconds, detail = out.get()  # detail: an error, or which client's CPU
            if kind == "cpu":  # a client's own CPU seconds, sent as it ends
                cpu[detail] += seconds
            elif kind == "heavy":
                heavy_done.append((seconds, detail))
            else:
                (failures.append(detail) if detail else latencies.append(seconds))

    while any(proc.is_alive() for proc in procs):
        peak[0] = max(peak[0], proc_stat(server.proc.pid)[1])
        drain()
        time.sleep(0.5)
    time.sleep(0.5)
    drain()
    cpu["server"] += cpu_seconds(server.proc.pid)
    return {
        "latencies": latencies,
        "failures": failures,
        "heavy": [(round(t, 1), e) for t, e in heavy_done],
        "cpu": list(cpu.values()),  # server+workers, light clients, heavy client
    }


def pooled(rounds: list[dict]) -> dict:
    """One phase's rounds together: light latency p50/p95 over all of them, summed CPU."""
    latencies = [t for r in rounds for t in r["latencies"]]
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {
        "light_requests": len(latencies),
        "light_failed": sum(len(r["failures"]) for r in rounds),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": q[18],
        "heavy": [h for r in rounds for h in r["heavy"]],
        "failures": [f for r in rounds for f in r["failures"]][:3],
        "cpu": [sum(c) for c in zip(*(r["cpu"] for r in rounds), strict=True)],
    }


def soak(server: Server, light: Path, heavy: list[Path], n: int) -> None:
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    rng = random.Random(0)
    files = [light] * 4 + heavy
    print(f"soak: {n} sequential requests with random settings")
    print("  request   RSS MB   open files   failed so far")
    failed = 0
    for i in range(1, n + 1):
        _, error = call(client, rng.choice(files), rng)
        failed += bool(error)
        if i == 1 or i % max(1, n // 10) == 0:
            rss, _, fds = proc_stat(server.proc.pid)
            print(f"  {i:7d} {rss:8.0f} {fds:12d} {failed:15d}", flush=True)


def request_costs(repeats: int, profile: bool) -> None:
    """Seconds of one ``/continue`` request (1 bar) per file, in-process through the app's
    Composer (no server, no queue): median of ``repeats``. ``profile``: where a light one goes."""
    import cProfile
    import pstats

    import torch

    from musegen.app.composer import Composer
    from musegen.generation.settings import GenerationSettings
    from musegen.pipeline import Pipeline

    torch.set_num_threads(1)  # as in the app with its default concurrency on 2 cores
    composer = Composer(Pipeline.from_pretrained(None))
    composer.workers = None  # every request in this process (heavy ones in their thread)
    settings = GenerationSettings(bars=1, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        light, heavy = make_files(Path(tmp))
        print(f"one request, in-process, median of {repeats}:")
        for path in (light, *heavy):
            data = path.read_bytes()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                composer.continue_once(data, settings, "bench", path.stem)
                times.append(time.perf_counter() - started)
            print(f"  {path.stem:22s} {statistics.median(times):6.2f} s")
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(composer.continue_once, light.read_bytes(), settings, "bench")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def contention() -> None:
    """One heavy request (the 16-track file, 1 bar) alone and beside a thread that runs Python
    without pause (as the server's own threads do in bursts): computed in this process's
    threads, where every torch op waits for the interpreter lock, vs in a worker process."""
    import torch

    from musegen.app.composer import Composer
    from musegen.app.runner import Job
    from musegen.generation.settings import GenerationSettings
    from musegen.pipeline import Pipeline

    torch.set_num_threads(1)
    composer = Composer(Pipeline.from_pretrained(None))
    settings = composer.checked(GenerationSettings(bars=1, seed=1))

    def busy(stop: threading.Event) -> None:
        while not stop.is_set():
            pass

    with tempfile.TemporaryDirectory() as tmp:
        _, heavy = make_files(Path(tmp))
        data = heavy[2].read_bytes()

        def in_thread() -> None:
            with composer.workspace.request("bench") as directory:
                job = Job(data, settings, directory, "t", streaming=False)
                list(composer.runner.run(job, threading.Event()))

        def in_worker() -> None:
            composer.continue_once(data, settings, "bench")

        in_worker()  # the worker starts and loads its model
        print("one heavy request (16 tracks, 1 bar), seconds:")
        for name, fn in (("server thread", in_thread), ("worker process", in_worker)):
            started = time.perf_counter()
            fn()
            alone = time.perf_counter() - started
            stop = threading.Event()
            spinner = threading.Thread(target=busy, args=(stop,))
            spinner.start()
            started = time.perf_counter()
            fn()
            beside = time.perf_counter() - started
            stop.set()
            spinner.join()
            print(f"  {name:15s} alone {alone:6.2f}   beside a busy Python thread {beside:6.2f}")
    composer.close()


def settle(server: Server, start_mb: float, seconds: float) -> float:
    """Wait (at most ``seconds``) until the temp folder is back to ``start_mb``; time waited."""
    started = time.monotonic()
    while time.monotonic() - started < seconds and folder_mb(server.tmp) > start_mb + 0.05:
        time.sleep(5)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="per load phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="idle, light, mixed in turn, this many times"
    )
    parser.add_argument("--clients", type=int, default=8, help="clients, one of them heavy")
    parser.add_argument(
        "--think", type=float, default=8.0, help="a light client's mean pause between requests (s)"
    )
    parser.add_argument("--soak", type=int, default=200, help="sequential requests (0: none)")
    parser.add_argument("--soak-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="20 s phases, soak of 20")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--keep-files-minutes",
        type=float,
        default=1.0,
        help="the app's setting (default there: 60), short so the clean-up is seen in the run",
    )
    parser.add_argument(
        "--settle", type=float, default=240.0, help="seconds to wait for the temp folder to empty"
    )
    parser.add_argument(
        "--requests", type=int, default=0, help="only time each file's request in-process, N times"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --requests: profile a light one"
    )
    parser.add_argument(
        "--contention",
        action="store_true",
        help="only time a heavy request beside a busy Python thread, in a thread vs a worker",
    )
    parser.add_argument("app_args", nargs="*", help="passed to app.py (after --)")
    args = parser.parse_args(argv)
    if args.contention:
        contention()
        return 0
    if args.requests:
        request_costs(args.requests, args.profile)
        return 0
    if args.quick:
        args.minutes, args.soak, args.rounds = 1 / 3, min(args.soak, 20), 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        light, heavy = make_files(tmp)
        server = Server(args, tmp)
        try:
            before = folder_mb(server.tmp)
            peak = [0.0]
            if not args.soak_only:
                seconds = args.minutes * 60 / args.rounds
                n, think = args.clients - 1, args.think
                # one client alone never has company, so its pause only sets the sample count
                plan = {"idle": (1, False, IDLE_THINK), "light": (n, False, think)}
                plan["mixed"] = (n, True, think)
                runs: dict[str, list[dict]] = {name: [] for name in plan}
                for _ in range(args.rounds):  # interleaved: outside load drifts
                    for name, (clients, with_heavy, pause) in plan.items():
                        runs[name].append(
                            phase(server, light, heavy, clients, with_heavy, seconds, pause, peak)
                        )
                rows = {name: pooled(r) for name, r in runs.items()}
                print(
                    f"{args.clients} clients ({n} light + 1 heavy), {args.minutes:g} min per "
                    f"phase in {args.rounds} rounds, think {think:g} s (idle: {IDLE_THINK:g} s), "
                    f"cpus={os.cpu_count()}"
                )
                print(
                    "  phase   light ok  failed   p50 s   p95 s   CPU s: server+workers, "
                    "light clients, heavy client"
                )
                for name, r in rows.items():
                    print(
                        f"  {name:6s} {r['light_requests']:8d} {r['light_failed']:7d} "
                        f"{r['p50']:7.2f} {r['p95']:7.2f}   "
                        + ", ".join(f"{c:.0f}" for c in r["cpu"])
                    )
                ratio = rows["mixed"]["p95"] / rows["idle"]["p95"]
                print(
                    f"  light p95 mixed / idle: {ratio:.2f} (target ≤ 2); "
                    f"mixed / light-only: {rows['mixed']['p95'] / rows['light']['p95']:.2f}"
                )
                each = [
                    pooled([m])["p95"] / pooled([i])["p95"]
                    for i, m in zip(runs["idle"], runs["mixed"], strict=True)
                ]
                print("  mixed / idle p95 per round: " + ", ".join(f"{r:.2f}" for r in each))
                print(f"  heavy requests (s, error): {rows['mixed']['heavy']}")
                if any(r["failures"] for r in rows.values()):
                    print("  light failures:", [r["failures"] for r in rows.values()])
            if args.soak:
                soak(server, light, heavy, args.soak)
            peak[0] = max(peak[0], proc_stat(server.proc.pid)[1])
            last = folder_mb(server.tmp)
            waited = settle(server, before, args.settle)
            during = folder_mb(server.tmp)
        finally:
            server.close()
        print(
            f"peak RSS {peak[0]:.0f} MB; temp folder {before:.1f} MB before, {last:.1f} MB after "
            f"the last request, {during:.1f} MB {waited:.0f} s later with the server still up "
            f"(--keep-files-minutes {args.keep_files_minutes:g}), "
            f"{folder_mb(server.tmp):.1f} MB after exit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
