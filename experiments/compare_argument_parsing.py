"""Do two checkouts parse the same command lines into the same arguments? (issue 22: the argument layer rewritten)

    git worktree add /tmp/old bc5ba67
    python experiments/compare_argument_parsing.py /tmp/old .

For each of the three scripts, every configs/*.yaml (alone and with each of ~40 representative flags: --linear_probe,
--do_eval false, --learning_rate over a base rate, --train_dir, --save_steps, ...) and the flags without a config,
each checkout parses the command line (NEW's config files for both) in its own process and writes the parsed
dataclasses (asdict / TrainingArguments.to_dict, sorted; logging_dir left out) or the error. A GPU recipe (bf16)
that this CPU machine refuses is parsed again with --use_cpu true. Printed: every case whose result differs. An unknown flag counts as the
same result whatever its message (HfArgumentParser's 'not used' or ours 'not a flag'), and a config with a script
that does not accept it (at OLD) is left out. Runs in about half a minute on one core.
"""

import contextlib
import dataclasses
import enum
import glob
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile

SCRIPTS = ("run_pretraining", "run_image_classification", "run_semantic_segmentation")
EXTRA = [
    *[["--do_eval", "false"], ["--no_do_eval"], ["--do_eval", "false", "--eval_strategy", "steps"]],
    *[["--do_eval", "false", "--metric_for_best_model", "loss"], ["--eval_strategy", "no"], ["--do_train", "false"]],
    *[["--linear_probe"], ["--linear_probe", "false"], ["--learning_rate", "1e-3"], ["--learning-rate", "1e-3"]],
    *[["--base_learning_rate", "2e-4"], ["--learning_rate", "1e-3", "--base_learning_rate", "2e-4"]],
    *[["--train_dir", "/data/train"], ["--train_dir", "/data/train", "--validation_dir", "/data/val"]],
    *[["--dataset_name", "digits", "--train_dir", "/data/train"], ["--save_steps", "50"], ["--save_strategy", "no"]],
    *[["--save_steps", "50", "--eval_steps", "20"], ["--save_every_epochs", "2"], ["--save_total_limit", "2"]],
    *[["--fsdp", "true"], ["--fsdp", "false"], ["--warmup_epochs", "1"], ["--warmup_steps", "5"]],
    *[["--num_train_epochs", "3", "--warmup_epochs", "1"], ["--max_steps", "5", "--num_train_epochs", "2"]],
    *[["--use_lars", "--optim", "sgd"], ["--layer_decay", "0.5"], ["--gradient_checkpointing", "true"]],
    *[["--bf16", "false"], ["--fp16", "true", "--use_cpu", "true"], ["--streaming", "true"], ["--norm_pix_loss"]],
    *[["--load_best_model_at_end", "true"], ["--lr_scheduler_type", "cosine"], ["--optim", "adamw_torch"]],
    *[["--mask_ratio", "0.5"], ["--nonexistent_flag", "1"]],
]
UNKNOWN = "an unknown flag"


def jsonable(args) -> dict:
    values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
    values.pop("logging_dir", None)  # time-dependent
    enums = json.dumps(values, sort_keys=True, default=lambda v: v.value if isinstance(v, enum.Enum) else repr(v))
    return {type(args).__name__: json.loads(enums)}


def parse_all(root: str, configs: str, out: str) -> None:
    """In a process of its own: parse every case with the scripts and mae_hf of `root` and the config files of the
    checkout `configs` (the same files for both sides); write {case: result}."""
    sys.path.insert(0, root)
    os.chdir(configs)
    from mae_hf.run_utils import parse_arguments

    cases = [[c, *e] for c in sorted(glob.glob("configs/*.yaml")) for e in ([], *EXTRA)] + [[], *EXTRA]
    results = {}
    for name in SCRIPTS:
        module = importlib.import_module(name)
        for argv in cases:
            for retry in ([], ["--use_cpu", "true"]):
                try:
                    with contextlib.redirect_stderr(io.StringIO()):
                        parsed = parse_arguments(module.ARGUMENTS, [*argv, "--output_dir", "/tmp/out", *retry])
                    result = [jsonable(args) for args in parsed]
                except Exception as error:
                    result = f"{type(error).__name__}: {error}"
                    if "not used by the HfArgumentParser" in result or "not a flag of this script" in result:
                        result = UNKNOWN
                if not (isinstance(result, str) and "support bf16" in result):
                    break
            results[" ".join([name, *argv])] = result
    with open(out, "w") as f:
        json.dump(results, f)


def main(old_root: str, new_root: str) -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, root in enumerate((old_root, new_root)):
            out = os.path.join(tmp, f"{i}.json")
            env = {**os.environ, "PYTHONPATH": os.path.abspath(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            roots = f"{os.path.abspath(root)!r}, {os.path.abspath(new_root)!r}"
            code += f"import compare_argument_parsing as c; c.parse_all({roots}, {out!r})"
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
            with open(out) as f:
                results.append(json.load(f))
    old, new = results

    def accepted(case: str) -> bool:  # a config alone parses with this script (at OLD)
        words = case.split()
        if len(words) < 2 or not words[1].startswith("configs/"):
            return True
        return not isinstance(old.get(" ".join(words[:2])), str)

    cases = sorted(case for case in old.keys() | new.keys() if accepted(case))
    differ = [case for case in cases if old.get(case, "<absent>") != new.get(case, "<absent>")]
    for case in differ:
        print(f"{case}\n  old: {str(old.get(case, '<absent>'))[:400]}\n  new: {str(new.get(case, '<absent>'))[:400]}")
    parsed = sum(not isinstance(old.get(case), str) for case in cases)
    print(f"{len(differ)} of {len(cases)} cases differ ({parsed} parse to dataclasses at OLD, the rest are errors)")
    return int(bool(differ))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
