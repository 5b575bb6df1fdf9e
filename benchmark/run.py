"""Speed and memory of `python -m algorithm.process` against the organisers' baseline, on challenge-shaped stacks.

    python -m benchmark.run [--sizes 10 20 40] [--repeats 3] [--baseline-sizes ...] [--skip-baseline]

For each N it builds (once, cached) a stack like the challenge's: N images of 2400 x 2880 x 3
uint8 (R = G = B), synthetic content of 1935 x 2400 or 1340 x 1671 pixels at the top-left and
zero padding, uncompressed MetaImage (20.7 MB an image). Every measurement is a whole process
(python startup, imports, model load, reading, writing the JSON): wall time, CPU time and peak
resident memory (ru_maxrss of the child from os.wait4). Medians over the repeats. Also:
the share of each phase (benchmark.phases, in-process) and the --threads / --batch-size options
with the largest deviation of their landmarks from the default run's.
Prints a table and saves everything as JSON under benchmark-results/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata as package_metadata
from pathlib import Path

from algorithm.devices import DEVICES
from algorithm.metadata import DEFAULT_MODEL_DIR, ModelError, ModelMetadata
from algorithm.preprocessing import CHALLENGE_HEIGHT, CHALLENGE_WIDTH
from training.synthetic import SCANNER_CONTENT_SIZES

REPO = Path(__file__).resolve().parent.parent


def _load_compare_outputs():
    """test/compare_outputs.py, the parity check test.sh runs (standard library only, not a package)."""
    spec = importlib.util.spec_from_file_location("compare_outputs", REPO / "test" / "compare_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_outputs = _load_compare_outputs()
DEFAULT_RESULTS = REPO / "benchmark-results"
CHANNELS = 3
IMAGE_MB = CHALLENGE_HEIGHT * CHALLENGE_WIDTH * CHANNELS / 1e6
NUM_LANDMARKS = 38
STACK_FORMAT = 1  # bump when the stack recipe changes: cached stacks are then rebuilt
# goals of the "fast and lean inference" issue
SPEEDUP_GOAL, SPEEDUP_AIM = 10.0, 20.0
MEMORY_HEADROOM_MB = 600.0
OPTION_CONFIGS = [  # (label, --threads, --batch-size); the first is the reference
    ("default", 0, 1), ("threads 1", 1, 1), ("threads 2", 2, 1),
    ("threads 1, batch 4", 1, 4), ("threads 2, batch 4", 2, 4),
]


class BenchmarkError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- stacks

def stack_recipe(count: int, seed: int) -> dict:
    return {"format": STACK_FORMAT, "images": count, "seed": seed, "content_sizes": SCANNER_CONTENT_SIZES,
            "landmarks": NUM_LANDMARKS, "height": CHALLENGE_HEIGHT, "width": CHALLENGE_WIDTH}


def build_stacks(counts: list[int], stack_root: Path, seed: int) -> dict[int, Path]:
    """One input folder per N holding one stack; reused when its recipe and size match."""
    folders: dict[int, Path] = {}
    missing = []
    for count in sorted(set(counts)):
        folder = stack_root / f"n{count}"
        stack = folder / "input" / f"stack{count}.mha"
        recipe_file = folder / "recipe.json"
        cached = (stack.is_file() and recipe_file.is_file()
                  and json.loads(recipe_file.read_text()) == json.loads(json.dumps(stack_recipe(count, seed)))
                  and stack.stat().st_size >= count * IMAGE_MB * 1e6)
        if not cached:
            missing.append(count)
        folders[count] = folder / "input"
    if missing:
        start = time.perf_counter()
        say(f"building synthetic images for stacks of {missing} (once; cached in {stack_root})")
        # In a separate process: memory this process keeps would count in every measured child's
        # peak, since a forked child's ru_maxrss includes the pages it shares before exec.
        builder = multiprocessing.get_context("spawn").Process(target=write_stacks, args=(missing, stack_root, seed))
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the stacks failed (exit code {builder.exitcode})")
        say(f"stacks built in {time.perf_counter() - start:.0f} s")
    return folders


def write_stacks(counts: list[int], stack_root: Path, seed: int) -> None:
    """Write the stacks of the given sizes (synthetic_set is deterministic per seed, so N images
    are the first N of max(N))."""
    from training.pack import write_stack
    from training.synthetic import synthetic_set

    images, _ = synthetic_set(max(counts), NUM_LANDMARKS, seed, SCANNER_CONTENT_SIZES)
    for count in counts:
        folder = stack_root / f"n{count}"
        shutil.rmtree(folder, ignore_errors=True)
        partial = folder / "partial" / f"stack{count}.mha"
        write_stack(partial, images[:count], count)
        (folder / "input").mkdir(parents=True)
        partial.rename(folder / "input" / partial.name)
        partial.parent.rmdir()
        (folder / "recipe.json").write_text(json.dumps(stack_recipe(count, seed), indent=2) + "\n")
        say(f"  wrote {folder / 'input' / partial.name}")


def stack_file(folder: Path) -> Path:
    return next(folder.glob("*.mha"))


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


# ---------------------------------------------------------------- processes

def run_measured(command: list[str], stdout_path: Path, log_path: Path) -> dict:
    """Run a command to completion; its wall time, CPU time and peak resident memory."""
    with open(stdout_path, "wb") as stdout, open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BenchmarkError(f"{' '.join(command)} exited with {process.returncode} (log: {log_path}):\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6}


def ours_command(input_dir: Path, output: Path, args: argparse.Namespace,
                 threads: int = 0, batch: int = 1) -> list[str]:
    command = [sys.executable, "-m", "algorithm.process", "--input", str(input_dir), "--output", str(output),
               "--device", args.device, "--threads", str(threads), "--batch-size", str(batch)]
    return command + (["--model", str(args.model)] if args.model else [])


def baseline_command(input_dir: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark.baseline", "--input", str(input_dir), "--output", str(output)]


def summarize_runs(runs: list[dict], count: int) -> dict:
    return {
        "images": count,
        "runs": runs,
        "wall_s": statistics.median(run["wall_s"] for run in runs),
        "s_per_image": statistics.median(run["wall_s"] for run in runs) / count,
        "cpu_s": statistics.median(run["cpu_s"] for run in runs),
        "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
        "peak_rss_mb_max": max(run["peak_rss_mb"] for run in runs),
    }


def linear_fit(summaries: dict[int, dict]) -> dict | None:
    """Least-squares wall = fixed + N * marginal over the sizes (needs two sizes or more)."""
    counts = sorted(summaries)
    if len(counts) < 2:
        return None
    walls = [summaries[n]["wall_s"] for n in counts]
    mean_n, mean_w = statistics.fmean(counts), statistics.fmean(walls)
    marginal = (sum((n - mean_n) * (w - mean_w) for n, w in zip(counts, walls))
                / sum((n - mean_n) ** 2 for n in counts))
    return {"marginal_s_per_image": marginal, "fixed_s": mean_w - marginal * mean_n}


# ---------------------------------------------------------------- parity

def max_deviation_px(reference: Path, other: Path) -> float:
    """Largest distance between the same landmark of the same image in two outputs (test.sh's comparison);
    infinite when they differ in anything but the coordinates."""
    try:
        return compare_outputs.compare(compare_outputs.load(reference, "reference"), compare_outputs.load(other, "other"),
                                       tolerance=math.inf)[1]
    except compare_outputs.ParityError:
        return math.inf


# ---------------------------------------------------------------- phases

def summarize_phases(profiles: list[dict]) -> dict:
    """Per-image phases pooled over the runs; the stack's validation hash spread over its images."""
    count = profiles[0]["images"]
    per_image = {"validation hash": [1000 * profile["validation_hash_s"] / count for profile in profiles]}
    for phase in profiles[0]["per_image_ms"]:
        per_image[phase] = [ms for profile in profiles for ms in profile["per_image_ms"][phase]]
    means = {phase: statistics.fmean(values) for phase, values in per_image.items()}
    total = sum(means.values())
    median_of = lambda group, key: statistics.median(profile[group][key] for profile in profiles)  # noqa: E731
    return {
        "images": count,
        "runs": len(profiles),
        "providers": profiles[0]["providers"],
        "per_image": {phase: {"mean_ms": means[phase], "median_ms": statistics.median(per_image[phase]),
                              "max_ms": max(per_image[phase]), "share": means[phase] / total if total else 0.0}
                      for phase in per_image},
        "per_image_total_ms": total,
        "fixed_s": {key: median_of("fixed_s", key) for key in profiles[0]["fixed_s"]},
        "memory_mb": {key: median_of("memory_mb", key) for key in profiles[0]["memory_mb"]},
        "profiles": profiles,
    }


# ---------------------------------------------------------------- report

def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(cell).rjust(width) for cell, width in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * width for width in widths)] + [line(row) for row in rows])


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def check_goals(results: dict) -> list[dict]:
    """The issue's goals, each with its numbers and PASS/FAIL."""
    goals = []
    ours, base, stacks = results["ours"], results["baseline"], results["stacks"]
    for count in sorted(ours, key=int):
        if count in base:
            ratio = base[count]["s_per_image"] / ours[count]["s_per_image"]
            goals.append({"goal": f"N={count}: ours >= {SPEEDUP_GOAL:g}x faster per image than the baseline "
                                  f"(aim {SPEEDUP_AIM:g}x)", "value": round(ratio, 1), "pass": ratio >= SPEEDUP_GOAL})
        limit = stacks[count]["mb"] + MEMORY_HEADROOM_MB
        goals.append({"goal": f"N={count}: our peak RSS <= stack + {MEMORY_HEADROOM_MB:g} MB ({limit:.0f} MB)",
                      "value": round(ours[count]["peak_rss_mb"], 1), "pass": ours[count]["peak_rss_mb"] <= limit})
    counts = sorted(ours, key=int)
    for small, large in zip(counts, counts[1:]):
        growth = ours[large]["peak_rss_mb"] - ours[small]["peak_rss_mb"]
        goals.append({"goal": f"peak growth N={small} -> {large} <= one image ({IMAGE_MB:.1f} MB): streaming",
                      "value": round(growth, 1), "pass": growth <= IMAGE_MB})
    for option in results.get("options", {}).get("configs", []):
        goals.append({"goal": f"option '{option['label']}' agrees with the default within {compare_outputs.DEFAULT_TOLERANCE_PX} px",
                      "value": option["max_deviation_px"], "pass": option["max_deviation_px"] <= compare_outputs.DEFAULT_TOLERANCE_PX})
    return goals


def render(results: dict) -> str:
    out = []
    settings = results["settings"]
    model = results["model"]
    machine = results["machine"]
    out.append(f"Benchmark {results['started']}  ({machine['cpus']} CPUs, load average at start "
               f"{machine['load_start']:.2f}, at end {machine['load_end']:.2f}; commit {machine['commit']})")
    out.append(f"ours: python -m algorithm.process --device {settings['device']}, model input "
               f"{model.get('input_height')} x {model.get('input_width')}, {model.get('stages', 1)} stage(s) "
               f"({model.get('trained_on', '?')}); "
               f"medians of {settings['repeats']} run(s); baseline: {settings['baseline_repeats']} run(s)")
    ours, base, stacks = results["ours"], results["baseline"], results["stacks"]
    rows = []
    for count in sorted(ours, key=int):
        o, s = ours[count], stacks[count]
        b = base.get(count)
        ratio = b["s_per_image"] / o["s_per_image"] if b else None
        rows.append([
            count, f"{o['s_per_image']:.3f}", f"{b['s_per_image']:.2f}" if b else "-",
            f"{ratio:.1f}x" if ratio else "-", verdict(None if ratio is None else ratio >= SPEEDUP_GOAL),
            f"{o['peak_rss_mb']:.0f}", f"{s['mb']:.0f}", f"{o['peak_rss_mb'] - s['mb']:+.0f}",
            verdict(o["peak_rss_mb"] <= s["mb"] + MEMORY_HEADROOM_MB), f"{b['peak_rss_mb']:.0f}" if b else "-",
        ])
    out.append("")
    out.append("Whole process, per N (s/image = median wall time / N, startup included)")
    out.append(table(["N", "ours s/img", "base s/img", "speed-up", f">={SPEEDUP_GOAL:g}x", "ours peak MB",
                      "stack MB", "peak-stack", f"<=+{MEMORY_HEADROOM_MB:g}", "base peak MB"], rows))
    for name, fit in results["fits"].items():
        if fit:
            out.append(f"{name}: {fit['marginal_s_per_image']:.3f} s per extra image + {fit['fixed_s']:.2f} s fixed "
                       "(least squares over N)")
    fits = results["fits"]
    if all(fits.values()) and fits["ours"]["marginal_s_per_image"] > 0:
        ratio = fits["baseline"]["marginal_s_per_image"] / fits["ours"]["marginal_s_per_image"]
        out.append(f"speed-up per extra image (startup excluded): {ratio:.1f}x")
    counts = sorted(ours, key=int)
    for small, large in zip(counts, counts[1:]):
        growth = ours[large]["peak_rss_mb"] - ours[small]["peak_rss_mb"]
        out.append(f"our peak growth N={small} -> {large}: {growth:+.1f} MB (one image is {IMAGE_MB:.1f} MB) "
                   f"{verdict(growth <= IMAGE_MB)}")

    phases = results.get("phases")
    if phases:
        out.append("")
        out.append(f"Phases of our algorithm (benchmark.phases, in-process, N={phases['images']}, "
                   f"{phases['runs']} run(s), batch 1, {', '.join(phases['providers'])})")
        rows = [[phase, f"{v['mean_ms']:.1f}", f"{v['median_ms']:.1f}", f"{v['max_ms']:.1f}", f"{100 * v['share']:.0f}%"]
                for phase, v in phases["per_image"].items()]
        rows.append(["total", f"{phases['per_image_total_ms']:.1f}", "", "", "100%"])
        out.append(table(["phase", "mean ms/img", "median ms", "max ms", "share"], rows))
        fixed = phases["fixed_s"]
        out.append("once per run: " + ", ".join(f"{key.replace('_', ' ')} {value:.2f} s" for key, value in fixed.items())
                   + " (python startup not included; the validation hash is per stack, shown above per image)")
        memory = phases["memory_mb"]
        out.append(f"resident memory: {memory['after_imports']:.0f} MB after the imports, "
                   f"{memory['after_model_load']:.0f} MB after the model load, {memory['peak']:.0f} MB at the peak")

    options = results.get("options")
    if options:
        out.append("")
        out.append(f"Options (N={options['images']}, medians of {options['repeats']} run(s); deviation = largest "
                   f"landmark distance from the default run's JSON, tolerance {compare_outputs.DEFAULT_TOLERANCE_PX} px)")
        rows = [[o["label"], o["threads"], o["batch_size"], f"{o['s_per_image']:.3f}", f"{o['cpu_s']:.1f}",
                 f"{o['peak_rss_mb']:.0f}", f"{o['max_deviation_px']:.2g}",
                 verdict(o["max_deviation_px"] <= compare_outputs.DEFAULT_TOLERANCE_PX)] for o in options["configs"]]
        out.append(table(["option", "--threads", "--batch-size", "s/img", "cpu s", "peak MB", "max dev px", "parity"],
                         rows))

    out.append("")
    out.append("Goals")
    out.append(table(["goal", "value", "result"],
                     [[g["goal"], g["value"], verdict(g["pass"])] for g in results["goals"]]))
    return "\n".join(out)


# ---------------------------------------------------------------- main

def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for name in ("numpy", "SimpleITK", "onnxruntime-gpu", "onnxruntime", "torch", "scikit-image", "evalutils"):
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "packages": versions,
            "commit": commit, "load_start": os.getloadavg()[0]}


def model_info(model_dir: Path | None) -> dict:
    folder = model_dir or DEFAULT_MODEL_DIR
    try:
        meta = ModelMetadata.load(folder)
    except ModelError:
        return {"folder": str(folder)}
    return {"folder": str(folder), "input_height": meta.codec.input_height, "input_width": meta.codec.input_width,
            "stages": 2 if meta.refinement else 1, "trained_on": meta.trained_on, "landmarks": meta.num_landmarks}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.run",
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40],
                        help="stack sizes N to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of ours per N; medians are reported (default: %(default)s)")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=None,
                        help="stack sizes for the baseline (default: --sizes); it takes about 5 s an image")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="runs of the baseline per N (default: %(default)s)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the baseline")
    parser.add_argument("--options-size", type=int, default=None,
                        help="N for the --threads/--batch-size comparison (default: the smallest of --sizes)")
    parser.add_argument("--skip-options", action="store_true", help="do not compare --threads/--batch-size")
    parser.add_argument("--phases-size", type=int, default=None,
                        help="N for the phase profile (default: the largest of --sizes)")
    parser.add_argument("--skip-phases", action="store_true", help="do not profile the phases")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="our --device (default: %(default)s, as the container runs)")
    parser.add_argument("--model", type=Path, default=None, help="our model folder (default: algorithm/model)")
    parser.add_argument("--seed", type=int, default=2023, help="seed of the synthetic images (default: %(default)s)")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_RESULTS / "stacks",
                        help="where the stacks are built and cached (default: benchmark-results/stacks)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                        help="where each run's folder run-DATE-TIME/ (results.json, outputs/, logs/) goes "
                        "(default: benchmark-results)")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.baseline_repeats < 1:
        parser.error("sizes and repeats must be positive")
    args.sizes = sorted(set(args.sizes))
    args.baseline_sizes = [] if args.skip_baseline else sorted(set(args.baseline_sizes or args.sizes))
    args.options_size = None if args.skip_options else (args.options_size or min(args.sizes))
    args.phases_size = None if args.skip_phases else (args.phases_size or max(args.sizes))
    if args.baseline_sizes:
        missing = [name for name in ("torch", "skimage") if importlib.util.find_spec(name) is None]
        if missing:
            parser.error(f"the baseline needs {' and '.join(missing)}: pip install -r benchmark/requirements.txt "
                         "(or run with --skip-baseline)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    run_dir = args.results_dir / f"run-{started:%Y%m%d-%H%M%S}"
    (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    machine = machine_info()
    if machine["load_start"] > 0.5:
        say(f"warning: load average {machine['load_start']:.2f}: the machine is busy, timings will be pessimistic")

    all_counts = set(args.sizes) | set(args.baseline_sizes)
    all_counts |= {n for n in (args.options_size, args.phases_size) if n}
    folders = build_stacks(sorted(all_counts), args.stack_dir, args.seed)
    for folder in folders.values():
        warm_page_cache(stack_file(folder))
    stacks = {str(n): {"path": str(stack_file(folder)), "mb": stack_file(folder).stat().st_size / 1e6}
              for n, folder in folders.items()}

    # on a quiet 2-core machine: ours about 2.5 s startup + 0.15 s an image, the baseline 5 s + 5 s an image
    ours_s = lambda n: 2.5 + 0.15 * n  # noqa: E731
    estimate = (ours_s(min(args.sizes)) + args.repeats * sum(ours_s(n) for n in args.sizes)
                + args.baseline_repeats * sum(5 + 5 * n for n in args.baseline_sizes)
                + (args.repeats * ours_s(args.phases_size) if args.phases_size else 0)
                + (len(OPTION_CONFIGS) * args.repeats * ours_s(args.options_size) if args.options_size else 0))
    say(f"measuring; about {estimate / 60:.1f} min on a quiet machine; run folder {run_dir}")

    def measure(kind: str, count: int, repeat: int, command_for) -> dict:
        name = f"{kind}-n{count}-r{repeat}"
        output = run_dir / "outputs" / f"{name}.json"
        result = run_measured(command_for(folders[count], output), run_dir / "logs" / f"{name}.stdout",
                              run_dir / "logs" / f"{name}.log")
        say(f"{name}: {result['wall_s']:.2f} s ({result['wall_s'] / count:.3f} s/image), "
            f"peak {result['peak_rss_mb']:.0f} MB")
        return {**result, "output": str(output)}

    ours_cmd = lambda folder, output: ours_command(folder, output, args)  # noqa: E731
    # one untimed run first: imports and libraries come from the page cache afterwards, as in every later run
    measure("warmup", min(args.sizes), 0, ours_cmd)
    ours_runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
    for repeat in range(1, args.repeats + 1):  # sizes interleaved, so a passing load spreads over all of them
        for count in args.sizes:
            ours_runs[count].append(measure("ours", count, repeat, ours_cmd))
    base_runs: dict[int, list[dict]] = {n: [] for n in args.baseline_sizes}
    if args.baseline_sizes:  # the baseline's libraries into the page cache too, untimed
        subprocess.run([sys.executable, "-c", "import torch, skimage.transform, evalutils, SimpleITK"],
                       cwd=REPO, check=True)
    for repeat in range(1, args.baseline_repeats + 1):
        for count in args.baseline_sizes:
            base_runs[count].append(measure("baseline", count, repeat, baseline_command))

    results: dict = {
        "started": f"{started:%Y-%m-%d %H:%M:%S}",
        "command": [sys.executable, "-m", "benchmark.run", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine,
        "model": model_info(args.model),
        "settings": {"sizes": args.sizes, "repeats": args.repeats, "baseline_sizes": args.baseline_sizes,
                     "baseline_repeats": args.baseline_repeats, "device": args.device,
                     "options_size": args.options_size, "phases_size": args.phases_size, "seed": args.seed,
                     "image_mb": IMAGE_MB, "content_sizes_hw": SCANNER_CONTENT_SIZES},
        "stacks": stacks,
        "ours": {str(n): summarize_runs(runs, n) for n, runs in ours_runs.items()},
        "baseline": {str(n): summarize_runs(runs, n) for n, runs in base_runs.items()},
    }
    results["fits"] = {"ours": linear_fit({n: results["ours"][str(n)] for n in args.sizes}),
                       "baseline": linear_fit({n: results["baseline"][str(n)] for n in args.baseline_sizes})}

    if args.phases_size:
        profiles = []
        for repeat in range(1, args.repeats + 1):
            name = f"phases-n{args.phases_size}-r{repeat}"
            command = [sys.executable, "-m", "benchmark.phases", "--input", stacks[str(args.phases_size)]["path"],
                       "--device", args.device] + (["--model", str(args.model)] if args.model else [])
            run_measured(command, run_dir / "logs" / f"{name}.stdout", run_dir / "logs" / f"{name}.log")
            profiles.append(json.loads((run_dir / "logs" / f"{name}.stdout").read_text()))
            say(f"{name}: done")
        results["phases"] = summarize_phases(profiles)

    if args.options_size:
        count = args.options_size
        configs = []
        for label, threads, batch in OPTION_CONFIGS:
            kind = f"option-t{threads}-b{batch}"
            def command_for(folder, output, t=threads, b=batch):
                return ours_command(folder, output, args, t, b)
            runs = [measure(kind, count, repeat, command_for) for repeat in range(1, args.repeats + 1)]
            configs.append({"label": label, "threads": threads, "batch_size": batch, **summarize_runs(runs, count)})
        reference = Path(configs[0]["runs"][0]["output"])
        for config in configs:
            config["max_deviation_px"] = max(max_deviation_px(reference, Path(run["output"])) for run in config["runs"])
        results["options"] = {"images": count, "repeats": args.repeats, "configs": configs}

    results["machine"]["load_end"] = os.getloadavg()[0]
    results["goals"] = check_goals(results)
    report = render(results)
    results["table"] = report
    results_file = run_dir / "results.json"
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(report)
    print(f"\nresults: {results_file}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
