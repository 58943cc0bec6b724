"""Command line: star-lite run | eval | compare | bench | report | paired | export-lm-eval."""

from __future__ import annotations

import argparse
import sys
import traceback

from .config import ConfigError, load_config
from .distributed import is_main

EPILOG = """examples:
  star-lite run configs/quickstart.yaml
  star-lite run configs/quickstart.yaml --set star.iterations=4 --set run.output_dir=runs/longer
  star-lite eval configs/quickstart.yaml --adapter runs/quickstart/iter_002/adapter
Running the same command again continues after the last finished iteration."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be written only when help is shown (``epilog_from``): the methods
    list imports every method, which a command that does not ask for it should not pay for."""

    def __init__(self, *args, epilog_from=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_from = epilog_from

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def _methods_epilog() -> str:
    from .methods import get, names

    return "methods (compare.methods; a user's own: package.module:name):\n" + "\n".join(
        f"  {m:<24} {get(m).summary}" for m in names())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="star-lite", description="Self-taught reasoning (STaR) on one GPU.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="YAML config file (see configs/; every key is commented there)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.learning_rate=1e-4 (repeatable; "
                            "values are read as YAML)")
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    p_run = sub.add_parser("run", help="run or continue the STaR loop; writes the run directory",
                           description="Run STaR: sample rationales, rationalize, train a fresh LoRA adapter "
                                       "per iteration, evaluate. Continues an interrupted run.")
    add_common(p_run)
    p_eval = sub.add_parser("eval", help="held-out accuracy of the base model or a saved adapter",
                            description="Greedy accuracy on the task's held-out problems.")
    add_common(p_eval)
    p_eval.add_argument("--adapter", help="a saved adapter directory (iter_NNN/adapter); default: the base model")
    p_eval.add_argument("--prompt", choices=["auto", "few-shot", "zero-shot"], default="auto",
                        help="few-shot: worked examples before the question; zero-shot: the bare question "
                             "(as adapters are trained); auto (default): few-shot for the base model, "
                             "zero-shot for an adapter unless sampling.few_shot_after_training)")
    p_eval.add_argument("--out", help="write per-problem results to this jsonl file")
    p_compare = sub.add_parser("compare", help="run several methods on one task and budget; table and plots",
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               description="Runs compare.methods with the same task, split, seed, prompt, grader\n"
                                           "and budget; writes comparison.csv/.md and PNG plots into\n"
                                           "compare.output_dir. Each method's run resumes.",
                               epilog_from=_methods_epilog)
    add_common(p_compare)
    p_bench = sub.add_parser("bench", help="sampling and SFT throughput against plain model.generate",
                             description="Prints useful tokens/s of star_lite's sampler and of plain "
                                         "model.generate on the same few-shot prompts (same run, alternating), "
                                         "prefill and decode time, SFT tokens/s and peak memory; medians and spread.")
    add_common(p_bench)
    p_bench.add_argument("--repeats", type=int, default=3, help="repeated measurements (default 3)")
    p_bench.add_argument("--num-prompts", type=int, default=64, help="prompts per sampling run (default 64)")
    p_bench.add_argument("--sft-steps", type=int, default=5, help="SFT steps per measurement (default 5)")
    p_bench.add_argument("--random-weights", metavar="ARCH",
                         help="a random-weight model of a real architecture's size, no download: "
                              "Qwen2.5-1.5B, Llama-3.2-1B, Llama-3.1-8B (tokenizer from model.name_or_path)")
    p_report = sub.add_parser("report", help="write report.md and PNG plots for a run directory",
                              description="Plots accuracy per iteration, the training set per iteration "
                                          "(rationalized share), accuracy by difficulty, and example rationales.")
    p_report.add_argument("run_dir", help="a run directory (run.output_dir)")
    p_report.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p_paired = sub.add_parser("paired", help="paired difference of two per-problem result files",
                              description="Accuracy of A minus accuracy of B on the same problems, its 95% "
                                          "interval (Newcombe) and the exact McNemar p, as compare reports them. "
                                          "A and B: star_lite eval.jsonl files, run directories (their last "
                                          "stage), or lm-evaluation-harness --log_samples files (samples_*.jsonl).")
    p_paired.add_argument("a", help="results A")
    p_paired.add_argument("b", help="results B")
    p_paired.add_argument("more", nargs="*", metavar="A2 B2",
                          help="more pairs, pooled into one difference (e.g. other seeds: "
                               "runs/c/seed_{0,1,2}/{grpo,few-shot} in bash)")
    p_paired.add_argument("--metric", help="lm-eval samples: the metric that says correct (default: the "
                                           "sample's first metric); v-star candidates.jsonl: majority (default) "
                                           "or best_of")
    p_paired.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p_export = sub.add_parser("export-lm-eval", help="the held-out problems as an lm-evaluation-harness task",
                              description="Writes an lm-eval task (YAML, a jsonl of the held-out problems with "
                                          "star_lite's exact prompts, a grader module calling the task's "
                                          "is_correct) and prints the lm_eval command that evaluates the same "
                                          "model and adapter on them; `star-lite paired` then compares "
                                          "lm-eval's --log_samples file with star_lite's eval.jsonl.")
    p_export.add_argument("config", help="a config file, or a run directory (its config.yaml and last adapter)")
    p_export.add_argument("out_dir", help="where the task files go (lm_eval --include_path)")
    p_export.add_argument("--adapter", help="a saved adapter directory; default: a run directory's last stage's "
                                            "adapter, the base model for a config file")
    p_export.add_argument("--prompt", choices=["auto", "few-shot", "zero-shot"], default="auto",
                          help="as for star-lite eval (auto: few-shot for the base model, zero-shot for an adapter)")
    p_export.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="override a config value (repeatable)")
    p_export.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def _cmd_compare(args) -> int:
    from .compare import compare, summarize, verdict

    cfg = load_config(args.config, args.overrides)
    rows = compare(cfg)
    if not is_main():  # under accelerate launch rank 0 prints the table
        return 0
    summary = summarize(cfg, rows)
    ref = summary["reference"]
    print(f"{'method':<24} {'stage':<10} {'mean acc.':>9} {'95% CI (pooled)':>16} {'cost tokens':>12}  "
          f"paired difference vs {ref}")
    for method, e in summary["methods"].items():
        d = e.get("paired")
        paired = (f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.2g}: "
                  f"{verdict(d, method, ref)}") if d else "(reference)" if method == ref else ""
        ci = f"[{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
        print(f"{method:<24} {e['stage']:<10} {e['mean']:>9.3f} {ci:>16} {e['cost_tokens']:>12,.0f}  {paired}")
    print(f"comparison: {cfg.compare.output_dir}/comparison.md ({len(cfg.compare.seeds)} seeds, "
          f"{max((r['num_eval'] for r in rows), default=0)} test problems)")
    return 0


def _cmd_bench(args) -> int:
    from .bench import bench

    cfg = load_config(args.config, args.overrides)
    bench(cfg, repeats=args.repeats, num_prompts=args.num_prompts, sft_steps=args.sft_steps,
          random_weights=args.random_weights)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _cmd_paired(args) -> int:
    from .compare import verdict
    from .paired import compare_files

    d = compare_files(args.a, args.b, *args.more, metric=args.metric)
    pooled = f", pooled over {d['num_pairs_of_files']} pairs of files" if d["num_pairs_of_files"] > 1 else ""
    print(f"A {d['accuracy_a']:.3f}  B {d['accuracy_b']:.3f}  on {d['n']} problems{pooled} (A only right on "
          f"{d['only_a']}, B only right on {d['only_b']})")
    print(f"A - B {d['difference']:+.3f}, 95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], exact McNemar "
          f"p={d['p_value']:.2g}: {verdict(d, 'A', 'B')}")
    return 0


def _cmd_export(args) -> int:
    from .lm_eval_export import export_lm_eval, resolve_source

    cfg, adapter, stage_few_shot = resolve_source(args.config, args.overrides, args.adapter)
    few_shot = stage_few_shot if args.prompt == "auto" else args.prompt == "few-shot"
    out = export_lm_eval(cfg, args.out_dir, adapter=adapter, few_shot=few_shot)
    if out["note"]:
        print(f"note: {out['note']}")
    print(f"wrote lm-eval task {out['task']} ({out['num_problems']} problems, "
          f"{'few-shot' if out['few_shot'] else 'zero-shot'} prompts, {adapter or 'base model'}) to {out['dir']}")
    print(f"run it (pip install \"star-lite[lm-eval]\"):\n  {out['command']}")
    print(f"then: star-lite paired {out['dir'] / 'results'}/*/samples_{out['task']}_<time>.jsonl EVAL_JSONL "
          "(the newest samples file; EVAL_JSONL from star-lite eval --out, or a run's iter_NNN/eval.jsonl)")
    return 0


def _cmd_run(args) -> int:
    from .loop import run

    cfg = load_config(args.config, args.overrides)
    rows = run(cfg)
    if not is_main():
        return 0
    print(f"{'iteration':>9} {'accuracy':>9} {'95% CI':>13} {'train ex.':>9} {'rationalized':>12} {'seconds':>8}")
    for r in rows:
        ci = f"{r['ci_low']:.2f}-{r['ci_high']:.2f}" if "ci_low" in r else "–"
        print(f"{r['iteration']:>9} {r['accuracy']:>9.3f} {ci:>13} {r['num_train_examples']:>9} "
              f"{r['num_rationalized']:>12} {r['seconds']:>8.0f}")
    print(f"run directory: {cfg.run.output_dir}")
    return 0


def _cmd_eval(args) -> int:
    from .api import default_few_shot, evaluate_model

    cfg = load_config(args.config, args.overrides)
    few_shot = default_few_shot(cfg, args.adapter) if args.prompt == "auto" else args.prompt == "few-shot"
    result = evaluate_model(cfg, adapter=args.adapter, few_shot=few_shot, out=args.out)
    print(f"accuracy {result['accuracy']:.3f} (95% CI {result['ci_low']:.3f}-{result['ci_high']:.3f}) "
          f"on {result['num_eval']} problems "
          f"({'few-shot' if few_shot else 'zero-shot'}, {args.adapter or 'base model'})")
    for group, acc in result["accuracy_by_difficulty"].items():
        print(f"  {group}: {acc:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _cmd_run, "eval": _cmd_eval, "compare": _cmd_compare, "bench": _cmd_bench,
                "report": _cmd_report, "paired": _cmd_paired,
                "export-lm-eval": _cmd_export}[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as err:  # one paragraph with the fix; --debug shows the traceback
        from .models import ModelError
        from .tasks.datafiles import DataError
        from .training import TrainingError

        known = (ConfigError, DataError, ModelError, TrainingError, ValueError, FileNotFoundError)
        if args.debug or not isinstance(err, known):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
