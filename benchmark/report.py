"""The issue's goals judged on a benchmark's results, and the results as a text table."""

from __future__ import annotations

from benchmark.parity import compare_outputs
from benchmark.stacks import IMAGE_MB

# goals of the "fast and lean inference" issue
SPEEDUP_GOAL, SPEEDUP_AIM = 10.0, 20.0
MEMORY_HEADROOM_MB = 600.0
DUPLICATE_CHECK_PHASE = "duplicate check"  # the container's StackLoader and UniqueStacksValidator, per stack


def check_goals(results: dict) -> dict[str, dict]:
    """The issue's goals, each with its number and whether it passes, by the key the report looks it up with."""
    goal = lambda text, value, passed: {"goal": text, "value": value, "pass": passed}  # noqa: E731
    goals = {}
    ours, base, stacks = results["ours"], results["baseline"], results["stacks"]
    counts = sorted(ours, key=int)
    for count in counts:
        if count in base:
            ratio = base[count]["s_per_image"] / ours[count]["s_per_image"]
            # judged on real cephalograms only: synthetic images hold no skull and take every fallback look
            real = results["settings"].get("images") is not None
            goals[f"speed-up {count}"] = goal(f"N={count}: ours >= {SPEEDUP_GOAL:g}x faster per image than the "
                                              f"baseline (aim {SPEEDUP_AIM:g}x)", round(ratio, 1),
                                              ratio >= SPEEDUP_GOAL if real else None)
        limit, peak = stacks[count]["mb"] + MEMORY_HEADROOM_MB, ours[count]["peak_rss_mb"]
        goals[f"memory {count}"] = goal(f"N={count}: our peak RSS <= stack + {MEMORY_HEADROOM_MB:g} MB "
                                        f"({limit:.0f} MB)", round(peak, 1), peak <= limit)
    for small, large in zip(counts, counts[1:]):
        growth = ours[large]["peak_rss_mb"] - ours[small]["peak_rss_mb"]
        goals[f"growth {small} {large}"] = goal(f"peak growth N={small} -> {large} <= one image ({IMAGE_MB:.1f} MB): "
                                                "streaming", round(growth, 1), growth <= IMAGE_MB)
    tolerance = compare_outputs.DEFAULT_TOLERANCE_PX
    for option in results.get("options", {}).get("configs", []):
        deviation = option["max_deviation_px"]
        goals[f"option {option['label']}"] = goal(f"option '{option['label']}' agrees with the default within "
                                                  f"{tolerance} px", deviation, deviation <= tolerance)
    return goals


# ---------------------------------------------------------------- report

def table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns under a header and a rule."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(cell).rjust(width) for cell, width in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * width for width in widths)] + [line(row) for row in rows])


def verdict(goal: dict | None) -> str:
    """PASS or FAIL as `check_goals` judged the goal; n/a where there is none (no baseline at that N), and
    'worst case' for a speed measured on synthetic images, which is not judged."""
    if goal is None:
        return "n/a"
    return "worst case" if goal["pass"] is None else ("PASS" if goal["pass"] else "FAIL")


def render_header(results: dict) -> list[str]:
    """The run's date, machine, our command and model."""
    settings, model, machine = results["settings"], results["model"], results["machine"]
    return [f"Benchmark {results['started']}  ({machine['cpus']} CPUs, load average at start "
            f"{machine['load_start']:.2f}, at end {machine['load_end']:.2f}; commit {machine['commit']})",
            f"ours: python -m algorithm.process --device {settings['device']}, model {model['folder']} "
            f"({model['origin']}), input {model['input_height']} x {model['input_width']}, {model['stages']} "
            f"stage(s) ({model['trained_on']}); medians of {settings['repeats']} run(s); baseline: "
            f"{settings['baseline_repeats']} run(s)",
            f"stacks: the images of {settings['images']}" if settings.get("images") else
            "stacks: synthetic images, which hold no skull, so ours also looks at each mirrored and turned: a worst "
            "case, its speed-up not judged (--images DIR: real cephalograms)"]


def render_sizes(results: dict, goals: dict[str, dict]) -> list[str]:
    """Ours against the baseline per N, the fits over N and our peak's growth."""
    ours, base, stacks = results["ours"], results["baseline"], results["stacks"]
    counts = sorted(ours, key=int)
    rows = []
    for count in counts:
        o, s, b, speed_up = ours[count], stacks[count], base.get(count), goals.get(f"speed-up {count}")
        rows.append([count, f"{o['s_per_image']:.3f}", f"{b['s_per_image']:.2f}" if b else "-",
                     f"{speed_up['value']:.1f}x" if speed_up else "-", verdict(speed_up),
                     f"{o['peak_rss_mb']:.0f}", f"{s['mb']:.0f}", f"{o['peak_rss_mb'] - s['mb']:+.0f}",
                     verdict(goals[f"memory {count}"]), f"{b['peak_rss_mb']:.0f}" if b else "-"])
    out = ["", "Whole process, per N (s/image = median wall time / N, startup included)",
           table(["N", "ours s/img", "base s/img", "speed-up", f">={SPEEDUP_GOAL:g}x", "ours peak MB", "stack MB",
                  "peak-stack", f"<=+{MEMORY_HEADROOM_MB:g}", "base peak MB"], rows)]
    fits = results["fits"]
    out += [f"{name}: {fit['marginal_s_per_image']:.3f} s per extra image + {fit['fixed_s']:.2f} s fixed "
            "(least squares over N)" for name, fit in fits.items() if fit]
    if all(fits.values()) and fits["ours"]["marginal_s_per_image"] > 0:
        ratio = fits["baseline"]["marginal_s_per_image"] / fits["ours"]["marginal_s_per_image"]
        out.append(f"speed-up per extra image (startup excluded): {ratio:.1f}x")
    for small, large in zip(counts, counts[1:]):
        growth = goals[f"growth {small} {large}"]
        out.append(f"our peak growth N={small} -> {large}: {growth['value']:+.1f} MB (one image is {IMAGE_MB:.1f} MB) "
                   f"{verdict(growth)}")
    return out


def render_phases(phases: dict) -> list[str]:
    """Each phase's time per image, the fixed costs and the memory of benchmark.phases."""
    rows = [[phase, f"{v['mean_ms']:.1f}", f"{v['median_ms']:.1f}", f"{v['max_ms']:.1f}", f"{100 * v['share']:.0f}%"]
            for phase, v in phases["per_image"].items()]
    rows.append(["total", f"{phases['per_image_total_ms']:.1f}", "", "", "100%"])
    fixed, memory = phases["fixed_s"], phases["memory_mb"]
    return ["", f"Phases of our algorithm (benchmark.phases, in-process, N={phases['images']}, "
            f"{phases['runs']} run(s), batch 1, {', '.join(phases['providers'])})",
            table(["phase", "mean ms/img", "median ms", "max ms", "share"], rows),
            "once per run: " + ", ".join(f"{key.replace('_', ' ')} {value:.2f} s" for key, value in fixed.items())
            + f" (python startup not included; the {DUPLICATE_CHECK_PHASE} is per stack, shown above per image)",
            f"resident memory: {memory['after_imports']:.0f} MB after the imports, "
            f"{memory['after_model_load']:.0f} MB after the model load, {memory['peak']:.0f} MB at the peak"]


def render_options(options: dict, goals: dict[str, dict]) -> list[str]:
    """Speed, memory and parity of each --threads / --batch-size configuration."""
    rows = [[o["label"], o["threads"], o["batch_size"], f"{o['s_per_image']:.3f}", f"{o['cpu_s']:.1f}",
             f"{o['peak_rss_mb']:.0f}", f"{o['max_deviation_px']:.2g}", verdict(goals[f"option {o['label']}"])]
            for o in options["configs"]]
    return ["", f"Options (N={options['images']}, medians of {options['repeats']} run(s); deviation = largest "
            f"landmark distance from the default run's JSON, tolerance {compare_outputs.DEFAULT_TOLERANCE_PX} px)",
            table(["option", "--threads", "--batch-size", "s/img", "cpu s", "peak MB", "max dev px", "parity"], rows)]


def render(results: dict, goals: dict[str, dict]) -> str:
    """The whole report as text: it only displays `results` and the verdicts `check_goals` gave."""
    out = render_header(results) + render_sizes(results, goals)
    if results.get("phases"):
        out += render_phases(results["phases"])
    if results.get("options"):
        out += render_options(results["options"], goals)
    rows = [[goal["goal"], goal["value"], verdict(goal)] for goal in goals.values()]
    out += ["", "Goals", table(["goal", "value", "result"], rows)]
    return "\n".join(out)
