"""Quality benchmark: hard, soft and mixed training targets on the embedded default, several seeds each.

    flock /tmp/heavy.lock python benchmarks/quality.py                      # hard/soft/mixed x seeds 0 1 2
    python benchmarks/quality.py --targets hard mixed --seeds 0 1 --json q.json

The default run (SST-2, Gemma 3 270M 8-shot local teacher -> the same model zero-shot with LoRA) is labelled once;
every configuration then trains its own student on the same labels (train.targets, train.seed) and is scored on the
same 200 test rows. The teacher's and the base student's scores do not depend on the configuration: they are
computed once and reused (evaluation.json keeps each part under a fingerprint of what it depends on, so a copied
part is reused only when it is valid for that configuration). Printed: each configuration's distilled accuracy and
wall time (training + evaluation), then per target the mean, the spread (min..max and the standard deviation) and
the gain over the teacher in points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = ("teacher_answers.jsonl", "labels.jsonl", "rejected.jsonl", "labelling.json", "pilot.json", "evaluation.json")


def run_config(work: Path, first: Path | None, targets: str, seed: int, extra: list[str]) -> dict:
    from pipeline.models import clear_model_cache, free_memory
    from pipeline.runner import run
    from pipeline.spec import load_spec

    out = work / f"{targets}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    if first is not None:  # the labels and the configuration-independent evaluation parts
        same = _same_config(first, targets, seed)
        for name in SHARED + (("student", "training.json", "checkpoints") if same else ()):
            if (first / name).is_file() and not (out / name).exists():
                shutil.copy2(first / name, out / name)
            elif same and (first / name).is_dir() and not (out / name).exists():
                shutil.copytree(first / name, out / name, symlinks=False)
    spec = load_spec(None, [f"out={out}", f"train.targets={targets}", f"train.seed={seed}", *extra])
    started = time.perf_counter()
    report = run(spec)
    seconds = time.perf_counter() - started
    clear_model_cache()
    free_memory()
    training = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    scores = report["scores"]
    return {"targets": targets, "seed": seed, "out": str(out), "seconds": round(seconds, 1),
            "teacher": scores.get("teacher"), "student_base": scores.get("student_base"),
            "student_distilled": scores.get("student_distilled"), "steps": training.get("steps"),
            "final_loss": training.get("final_loss")}


def _same_config(folder: Path, targets: str, seed: int) -> bool:
    """Whether a finished run folder trained this very configuration (its student is then reused: train() and
    evaluation keep finished work only while their fingerprints match, so a mismatch is retrained, never misreported)."""
    import yaml

    try:
        train = (yaml.safe_load((folder / "spec.yaml").read_text()) or {}).get("train") or {}
    except (OSError, yaml.YAMLError):
        return False
    return train.get("targets", "hard") == targets and int(train.get("seed", 0)) == seed


def summarise(results: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["targets"], []).append(r)
    teacher = next((r["teacher"] for r in results if r.get("teacher") is not None), None)
    out = {}
    for targets, rows in by.items():
        acc = [r["student_distilled"] for r in rows if r.get("student_distilled") is not None]
        if not acc:
            continue
        out[targets] = {"n": len(acc), "mean": statistics.fmean(acc), "min": min(acc), "max": max(acc),
                        "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "vs_teacher_points": (statistics.fmean(acc) - teacher) * 100 if teacher is not None else None,
                        "seconds_mean": statistics.fmean(r["seconds"] for r in rows)}
    return {"teacher": teacher, "student_base": next((r["student_base"] for r in results), None), "targets": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", default=["hard", "soft", "mixed"], choices=["hard", "soft", "mixed"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", help="folder for the run folders (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--labels-from", help="a finished run folder of the same spec to take the labels (and the teacher's "
                    "and base student's scores) from, instead of labelling again")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every configuration")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="distillery-quality-"))
    print(f"work folder {work}; targets {' '.join(args.targets)}; seeds {' '.join(map(str, args.seeds))}", flush=True)
    results: list[dict] = []
    first: Path | None = Path(args.labels_from) if args.labels_from else None
    started = time.perf_counter()
    for seed in args.seeds:
        for targets in args.targets:
            r = run_config(work, first, targets, seed, args.overrides)
            first = first or Path(r["out"])
            results.append(r)
            print(f"{targets:5} seed {seed}: distilled {r['student_distilled']:.3f}  teacher {r['teacher']:.3f}  "
                  f"base {r['student_base']:.3f}  {r['seconds']:.0f} s", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"results": results, "summary": summarise(results)}, indent=2) + "\n")
    summary = summarise(results)
    print(f"\nteacher {summary['teacher']:.3f}, base student {summary['student_base']:.3f}; "
          f"total {time.perf_counter() - started:.0f} s (the first configuration includes labelling)")
    print(f"{'targets':7} {'n':>2} {'mean':>6} {'min':>6} {'max':>6} {'std':>6} {'vs teacher':>11} {'s/config':>8}")
    for targets, s in summary["targets"].items():
        print(f"{targets:7} {s['n']:2} {s['mean']:6.3f} {s['min']:6.3f} {s['max']:6.3f} {s['std']:6.3f} "
              f"{s['vs_teacher_points']:+10.1f}p {s['seconds_mean']:8.0f}")
    best = max(summary["targets"].items(), key=lambda kv: kv[1]["mean"], default=None)
    if best and len(summary["targets"]) > 1:
        rest = [s for t, s in summary["targets"].items() if t != best[0]]
        margin = best[1]["mean"] - max(s["mean"] for s in rest)
        spread = max(best[1]["max"] - best[1]["min"], *(s["max"] - s["min"] for s in rest))
        verdict = "wins by more than the spread" if margin > spread else "does not win by more than the spread"
        print(f"best mean: {best[0]} (+{margin * 100:.1f} points over the next; largest min..max spread "
              f"{spread * 100:.1f} points): {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
