"""python -m hrm.lm_eval --checkpoint DIR --tasks T1,T2 [--include_path DIR] [--limit N] [--num_fewshot K]
[--batch_size B] [--output FILE]: lm-evaluation-harness on an hrm model in-process, no server.

``HrmLM`` is an lm-eval ``LM`` (registered as lm-eval model ``hrm`` by ``register()``): ``loglikelihood`` and
``loglikelihood_rolling`` score batches of token sequences in one padded forward pass each (``hrm.scoring``,
the same numbers ``/v1/completions`` reports with ``echo`` and ``logprobs``), ``generate_until`` decodes batches
of prompts together (``hrm.decoding.text_streams``: batched prefill, greedy unless the task samples).
Tokenisation, truncation and rolling windows follow lm-eval's API models (``TemplateAPI``), so the scores equal
those of lm-eval's ``local-completions`` against ``hrm.serve``. Needs the ``lm_eval`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import hrm
from hrm import scoring
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.decoding import text_streams
from hrm.inference import Sampling

DEFAULT_MAX_LENGTH = 2048  # lm-eval's API models' default context (a pure SSM has no limit of its own)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError("hrm.lm_eval needs lm-evaluation-harness: pip install -e '.[lm_eval]'") from None


_REGISTERED: dict = {}


def register():
    """The ``HrmLM`` class, registered with lm-eval as model ``hrm`` (once)."""
    if "hrm" in _REGISTERED:
        return _REGISTERED["hrm"]
    _require_lm_eval()
    import lm_eval.models  # noqa: F401 (lm-eval fills its registry lazily only while it is empty)
    from lm_eval import utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model

    @register_model("hrm")
    class HrmLM(TemplateLM):
        """lm-eval's view of an hrm model: ``HrmLM(model=hrm.load(...))`` or, from lm-eval's model_args,
        ``pretrained=DIR[,step=N]``."""

        def __init__(
            self,
            pretrained: str | None = None,
            model=None,
            step=None,
            batch_size: int | str = 16,
            max_length: int | None = None,
            max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
            **kwargs,
        ):
            super().__init__()
            if model is None:
                if pretrained is None:
                    raise UsageError("HrmLM needs model=hrm.load(...) or pretrained=RUN_DIR")

                model = hrm.load(pretrained, step=step)
            self.model = model
            self.batch_size = int(batch_size)
            limit = model.generator.context_limit(model.params)
            self.max_length = int(max_length or limit or DEFAULT_MAX_LENGTH)
            self.max_gen_toks = int(max_gen_toks)

        @property
        def eot_token_id(self) -> int:
            return self.model.tokenizer.eos_id

        def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
            return self.model.tokenizer.encode(string)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            """(sum of the continuation's log-probabilities, whether it is the greedy continuation) per
            (key, context ids, continuation ids); the input is left-truncated to ``max_length`` as lm-eval's
            API models do."""
            inputs, continuations = [], []
            for _, context, continuation in requests:
                inputs.append((list(context) + list(continuation))[-self.max_length :])
                continuations.append(len(continuation))
            results = []
            for start in range(0, len(inputs), self.batch_size):
                batch = inputs[start : start + self.batch_size]
                for scores, n in zip(scoring.score(self.model, batch), continuations[start : start + len(batch)]):
                    logprob = float(np.sum(scores.logprobs[-n:].astype(np.float64))) if n else 0.0
                    results.append((logprob, bool(np.all(scores.greedy[-n:]))))
            for (key, _, _), result in zip(requests, results):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, result)
            return results

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            """Each string's total log-probability in disjoint ``max_length`` windows (lm-eval's API models')."""
            windows, owners = [], []
            for i, (string,) in enumerate(req.args for req in requests):
                for window in map(
                    utils.make_disjoint_window,
                    utils.get_rolling_token_windows(
                        token_list=self.tok_encode(string),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length - 1,
                        context_len=1,
                    ),
                ):
                    windows.append((None, *window))
                    owners.append(i)
            totals = [0.0] * len(requests)
            for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
                totals[owner] += logprob
            for req, total in zip(requests, totals):
                self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            """Continuations up to the first ``until`` string, prompts with the same settings decoded together."""
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
            outputs = [""] * len(requests)
            for indices in groups.values():
                settings = dict(requests[indices[0]].args[1])
                until = settings.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                new_tokens = int(settings.get("max_gen_toks", self.max_gen_toks))
                temperature = float(settings.get("temperature", 0.0)) if settings.get("do_sample") else 0.0
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    streams, pieces = text_streams(
                        self.model,
                        [requests[i].args[0] for i in chunk],
                        new_tokens,
                        Sampling(temperature),
                        stop=until,
                    )
                    for _ in pieces:
                        pass
                    for i, stream in zip(chunk, streams):
                        outputs[i] = stream.text
                        self.cache_hook.add_partial("generate_until", requests[i].args, stream.text)
            return outputs

    _REGISTERED["hrm"] = HrmLM
    return HrmLM


def evaluate(model, tasks: list[str], include_path: str | None = None, **options) -> dict:
    """lm-eval's ``simple_evaluate`` of ``model`` (an ``hrm.load`` model) on ``tasks``."""
    HrmLM = register()
    import lm_eval  # optional (the lm_eval extra), checked by register()
    from lm_eval.tasks import TaskManager

    batch_size = options.pop("batch_size", 16)
    return lm_eval.simple_evaluate(
        model=HrmLM(model=model, batch_size=batch_size),
        tasks=tasks,
        task_manager=TaskManager(include_path=include_path),
        **options,
    )


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.lm_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory, a checkpoints/N folder or an export")
    parser.add_argument("--step", default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated")
    parser.add_argument("--include_path", default=None, help="a folder of your own task YAML files")
    parser.add_argument("--limit", type=float, default=None, help="examples per task (a fraction if < 1)")
    parser.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences scored or decoded together")
    parser.add_argument("--output", default=None, help="write lm-eval's results as JSON to this file")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be > 0, got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num_fewshot must be >= 0, got {args.num_fewshot}")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise UsageError(f"--include_path '{args.include_path}' is not a folder")
    _require_lm_eval()
    from lm_eval.utils import make_table  # optional (the lm_eval extra), checked above

    model = hrm.load(args.checkpoint, step=args.step)
    results = evaluate(
        model,
        [t for t in args.tasks.split(",") if t],
        args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        log_samples=False,
    )
    if results is None:
        return
    print(make_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
