"""The `mlspecqd` command line. Bad arguments exit with code 2 and a message that says what and where."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mlspecqd import _native, gguf, hub
from mlspecqd.apps.batch import BatchFileError, run_batch
from mlspecqd.apps.conversation import ChatSession
from mlspecqd.apps.expert_profile import measure_expert_rows, profile_path, write_profile
from mlspecqd.apps.generation import MAX_NEW_TOKENS_LIMIT
from mlspecqd.apps.llm import LLM
from mlspecqd.apps.loading import MAX_PARALLEL, load
from mlspecqd.apps.repl import ChatLoop, format_stats
from mlspecqd.engine import kernel_choice
from mlspecqd.engine.mixed_experts import resident_bytes
from mlspecqd.engine.model import Model
from mlspecqd.engine.sampling import SamplingParams
from mlspecqd.speculative import POLICY_NAMES
from mlspecqd.tokenizer import Tokenizer


class UsageError(Exception):
    """An argument or input the user can fix: printed without a traceback, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit code 2, as for every other bad input)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _count(low: int, high: int = MAX_NEW_TOKENS_LIMIT):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}] (got {value})")
        return value

    return parse


# Suffixes of a byte count on the command line (powers of 1024).
_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """A positive byte count: a whole number with an optional K, M, G or T (powers of 1024), e.g. 6G."""
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number and number[-1] in _BYTE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * _BYTE_UNITS[unit]) if number else 0
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive byte count such as 6G, 6000M or 123456, got {text!r}")
    return value


def parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def cmd_info(args: argparse.Namespace) -> int:
    features = _native.cpu_features()
    print("cpu features: " + " ".join(name for name, present in sorted(features.items()) if present))
    print("missing:      " + (" ".join(name for name, present in sorted(features.items()) if not present) or "-"))
    print(f"kernels:      {_native.active_isa()} (supported: {', '.join(_native.supported_isas())})")
    print(f"threads:      {_native.num_threads()} (physical cores available: {_native.default_num_threads()})")
    pinned = os.environ.get(kernel_choice.PIN_VARIABLE)
    print(f"draft kernels: {kernel_choice.PIN_VARIABLE}={pinned} pins every draft" if pinned else
          f"draft kernels: timed per model on first load (pin with {kernel_choice.PIN_VARIABLE}=TABLE[:bf16|int8]); "
          f"remembered in {kernel_choice.cache_path()} for this CPU:")
    if not pinned:
        plans = kernel_choice.remembered_plans()
        for model, plan in sorted(plans.items()):
            print(f"  {model}")
            print("    " + ", ".join(f"{rows} rows {choice}" for rows, choice in zip(kernel_choice.ROW_CLASSES, plan)))
        if not plans:
            print("  none yet")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    names = list(hub.NAMED_MODELS) if args.all else args.names
    if not names:
        raise UsageError("name a model to pull (" + ", ".join(hub.NAMED_MODELS) + ") or give --all")
    for name in names:
        try:
            print(hub.pull(name, progress=not args.quiet))
        except hub.ModelNotFoundError as error:
            raise UsageError(str(error)) from None
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        source = hub.resolve(args.input)
        gguf.convert(source, args.output, args.type)
    except (hub.ModelNotFoundError, gguf.GGUFError) as error:
        raise UsageError(str(error)) from None
    print(args.output)
    return 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and speculation")
    group.add_argument("-m", "--model", default=hub.DEFAULT_MODEL,
                       help=f"a GGUF file or a named model ({', '.join(hub.NAMED_MODELS)}); default %(default)s")
    group.add_argument("--ctx", type=_count(2), default=4096, help="context length in tokens (default %(default)s)")
    group.add_argument("--threads", type=_count(1, 4096), default=None, help="threads (default: physical cores)")
    group.add_argument("--precision", choices=("bf16", "mxfp4"), default="bf16",
                       help="the target's linear weights (default %(default)s)")
    group.add_argument("--draft", action="append", metavar="SPEC",
                       help="a draft level, smallest first, repeatable: 'ngram', 'mxfp4' (the target cast to "
                            "MXFP4) or PATH-OR-NAME[:mxfp4|:bf16]; default: the named model's drafts")
    group.add_argument("--draft-max", type=_count(1, 64), default=8, help="most tokens per draft (default 8)")
    group.add_argument("--draft-policy", choices=POLICY_NAMES, default="cost",
                       help="how many tokens each draft proposes (default %(default)s)")
    group.add_argument("--no-speculation", action="store_true", help="the target alone, no drafts")
    group.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="BYTES",
                       help="memory the weights are fitted to, e.g. 6G or 6000M (default: what is available); "
                            "an MoE target keeps as many of its most used experts in BF16 as fit, the rest MXFP4")
    group.add_argument("--bf16-experts", type=parse_fraction, default=None, metavar="FRACTION",
                       help="MoE target: this fraction of its experts in BF16, the most used first (needs an expert "
                            "profile, see profile-experts), the rest in MXFP4")
    group.add_argument("--expert-profile", default=None, metavar="FILE",
                       help="router counts to choose hot experts by (default: MODEL.gguf.expert-rows.json)")


# The sampling flags: (flag, SamplingParams field, type, help); defaults are SamplingParams.greedy()'s.
SAMPLING_FLAGS = (
    ("--temp", "temperature", float, "temperature; 0 is greedy"),
    ("--top-k", "top_k", int, "keep the k likeliest tokens (0: off)"),
    ("--top-p", "top_p", float, "nucleus sampling mass (1: off)"),
    ("--min-p", "min_p", float, "drop tokens below min-p x the top one"),
    ("--repeat-penalty", "repeat_penalty", float, "repetition penalty (1: off)"),
    ("--seed", "seed", int, "seed for sampling (default: fresh entropy)"),
)


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int | None) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("-n", "--max-tokens", type=_count(1), default=max_tokens,
                       help="most tokens to generate" + (f" (default {max_tokens})" if max_tokens else
                                                         " (default: to the end of the answer)"))
    defaults = SamplingParams.greedy()
    for flag, name, kind, help_text in SAMPLING_FLAGS:
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default {default:g})"
        group.add_argument(flag, dest=name, type=kind, default=default, help=help_text + shown)
    group.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams.greedy().replace(**{name: getattr(args, name) for _, name, _, _ in SAMPLING_FLAGS})


def load_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """mlspecqd.load()'s keyword arguments, as the model arguments give them."""
    if args.no_speculation and args.draft:
        raise UsageError("--draft and --no-speculation contradict each other: give one")
    return {"model": args.model, "drafts": [] if args.no_speculation else args.draft, "threads": args.threads,
            "ctx": args.ctx, "draft_policy": args.draft_policy, "draft_max": args.draft_max,
            "precision": args.precision, "parallel": getattr(args, "parallel", 1),
            "memory_budget": args.memory_budget, "bf16_experts": args.bf16_experts,
            "expert_profile": args.expert_profile}


def load_from_args(args: argparse.Namespace) -> LLM:
    """The LLM the model arguments describe; bad ones raise UsageError before the weights are read."""
    arguments = load_arguments(args)
    started = time.perf_counter()
    try:
        llm = load(**arguments)
    except (ValueError, OSError) as error:  # every bad-input error of loading is a ValueError subclass
        raise UsageError(str(error)) from None
    if getattr(args, "verbose", False):
        print(f"loaded {llm!r} in {time.perf_counter() - started:.1f} s, {_native.num_threads()} threads",
              file=sys.stderr)
        print(weights_summary(llm.models), file=sys.stderr)
    return llm


def weights_summary(models: Sequence[Model]) -> str:
    """One line: the weights in memory (shared arrays once) and, for an MoE target, its BF16 experts."""
    text = f"weights: {resident_bytes(model.tensors for model in models) / 2**30:.2f} GiB in memory"
    bf16_experts = models[0].bf16_experts()
    if bf16_experts.size:
        text += (f"; target experts in BF16: {int(bf16_experts.sum())} of {bf16_experts.size}, the rest MXFP4; "
                 f"per layer {' '.join(str(int(count)) for count in bf16_experts.sum(axis=1))}")
    return text


def cmd_profile_experts(args: argparse.Namespace) -> int:
    """Count the rows routed to each expert over a calibration text; write them beside the model."""
    try:
        path = hub.resolve(args.model)
        text = Path(args.text).read_text(encoding="utf-8")
        token_ids = Tokenizer.from_gguf(path).encode(text)[: args.tokens]
        with Model.load(path, memory_budget=args.memory_budget) as model:
            if not model.spec.is_moe:
                raise UsageError(f"{path} has no experts to profile")
            rows = measure_expert_rows(model, token_ids)
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from None
    output = Path(args.output) if args.output else profile_path(path)
    write_profile(output, rows, len(token_ids))
    share = rows / rows.sum(axis=1, keepdims=True)
    print(f"{output}: {len(token_ids)} tokens; busiest expert per layer takes "
          f"{share.max(axis=1).mean():.1%} of the rows on average (uniform: {1 / rows.shape[1]:.1%})")
    return 0


def read_prompt(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            prompt = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"-f {args.file}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    else:
        prompt = args.prompt
    if not prompt.strip():
        raise UsageError("the prompt is empty" + (f" (file {args.file})" if args.file is not None else ""))
    return prompt


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    sampling = _checked(lambda: sampling_from_args(args))
    with load_from_args(args) as llm:
        if args.chat:
            prompt_or_tokens = _checked(lambda: llm.chat_prompt_tokens([{"role": "user", "content": prompt}]))
        else:
            prompt_or_tokens = prompt
        generation = _checked(lambda: llm.start(prompt_or_tokens, args.max_tokens, sampling, args.stop))
        if args.json:
            result = generation.run()
            print(json.dumps({"model": llm.model_name, "levels": llm.level_names, "text": result.text,
                              "tokens": result.tokens, "finish_reason": result.finish_reason,
                              "timings": result.timings}, ensure_ascii=False))
        else:
            for piece in generation:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            result = generation.result
        if args.verbose:
            print("\n".join([f"finish_reason: {result.finish_reason}", *format_stats(result.timings)]),
                  file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    sampling = _checked(lambda: sampling_from_args(args))
    with load_from_args(args) as llm:
        if llm.tokenizer.chat_template is None:
            raise UsageError(f"-m {args.model}: this model has no chat template; use `mlspecqd generate`")
        session = ChatSession(llm, system=args.system, max_tokens=args.max_tokens, sampling=sampling, stop=args.stop)
        interactive = sys.stdin.isatty()

        def read_line() -> str | None:
            if interactive:
                try:
                    return input("> ")
                except EOFError:
                    sys.stdout.write("\n")
                    return None
            line = sys.stdin.readline()
            return line or None

        return ChatLoop(session, read_line, sys.stdout, interactive).run()


def cmd_batch(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        raise UsageError(f"{args.input}: no such input file")
    if args.ray is not None:
        from mlspecqd.apps.ray_batch import RayBatchError, RayUnavailableError, run_batch_on_ray

        try:
            summary = run_batch_on_ray(load_arguments(args), args.input, args.output,
                                       address=None if args.ray == "local" else args.ray, actors=args.actors,
                                       progress=sys.stderr)
        except (BatchFileError, RayUnavailableError) as error:
            raise UsageError(str(error)) from None
        except RayBatchError as error:
            print(f"mlspecqd batch: error: {error}", file=sys.stderr)
            return 1
        print(summary.line(), file=sys.stderr)
        return 0
    with load_from_args(args) as llm:
        try:
            summary = run_batch(llm, args.input, args.output, progress=sys.stderr)
        except BatchFileError as error:
            raise UsageError(str(error)) from None
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mlspecqd.apps.server import ServerSettings, serve
    except ImportError as error:
        raise UsageError(f"the server needs its extra: pip install 'mlspecqd[server]' ({error})") from None
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"mlspecqd serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              "this address can use the model", file=sys.stderr)
    settings = ServerSettings(api_key=args.api_key, max_waiting=args.max_waiting)
    with load_from_args(args) as llm:
        try:
            serve(llm, args.host, args.port, settings,
                  announce=lambda url: print(f"mlspecqd serve: {llm.model_name} on {url}", file=sys.stderr,
                                             flush=True))
        except OSError as error:
            raise UsageError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
    return 0


def _checked(make: Any) -> Any:
    """make(), with bad-input errors (ValueError subclasses) turned into UsageError."""
    try:
        return make()
    except ValueError as error:
        raise UsageError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="mlspecqd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="CPU features and the kernels that will run")
    info.set_defaults(run=cmd_info)
    pull = commands.add_parser("pull", help="download a named model into the cache and check it")
    pull.add_argument("names", nargs="*", metavar="NAME", help=", ".join(hub.NAMED_MODELS))
    pull.add_argument("--all", action="store_true", help="every named model")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(run=cmd_pull)
    convert = commands.add_parser("convert", help="write a GGUF with its weights cast to another type")
    convert.add_argument("input", metavar="IN", help="a GGUF file or a named model")
    convert.add_argument("output", metavar="OUT", help="the GGUF to write (written whole, or not at all)")
    convert.add_argument("--type", required=True, choices=sorted(gguf.CASTS), help="type of the 2-D tensors")
    convert.set_defaults(run=cmd_convert)

    profile = commands.add_parser("profile-experts",
                                  help="count an MoE model's router choices over a text, for --bf16-experts")
    profile.add_argument("-m", "--model", required=True, help="a GGUF file or a named model")
    profile.add_argument("--text", required=True, metavar="FILE", help="calibration text (UTF-8)")
    profile.add_argument("--tokens", type=_count(1, 10**7), default=8192,
                         help="most tokens to run (default %(default)s)")
    profile.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="BYTES",
                         help="load the model as this budget allows (see generate --memory-budget)")
    profile.add_argument("-o", "--output", default=None,
                         help="the file to write (default: beside the model, MODEL.gguf.expert-rows.json)")
    profile.set_defaults(run=cmd_profile_experts)

    generate = commands.add_parser("generate", help="continue a prompt, streaming the text to stdout")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("-p", "--prompt", help="the prompt text")
    source.add_argument("-f", "--file", help="read the prompt from this file")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object: text, token ids, timings")
    generate.add_argument("-v", "--verbose", action="store_true", help="timings and per-level stats on stderr")
    add_sampling_arguments(generate, max_tokens=128)
    add_model_arguments(generate)
    generate.set_defaults(run=cmd_generate)

    chat = commands.add_parser("chat", help="talk with a model: /reset, /stats, /exit; Ctrl-C stops an answer")
    chat.add_argument("--system", help="a system message opening the conversation")
    chat.add_argument("-v", "--verbose", action="store_true", help="load details on stderr")
    add_sampling_arguments(chat, max_tokens=None)
    add_model_arguments(chat)
    chat.set_defaults(run=cmd_chat)

    batch = commands.add_parser("batch", help="answer an OpenAI batch file (JSONL); a rerun resumes")
    batch.add_argument("input", metavar="IN.jsonl", help="requests: custom_id, method, url, body per line")
    batch.add_argument("output", metavar="OUT.jsonl", help="answers, appended one line per request")
    batch.add_argument("-v", "--verbose", action="store_true", help="load details on stderr")
    batch.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="answer on a Ray cluster (needs mlspecqd[ray]): its ADDRESS, or none for the one "
                            "RAY_ADDRESS names or a local one")
    batch.add_argument("--actors", type=_count(1, 4096), default=2,
                       help="with --ray: actors, each holding one loaded model (default %(default)s)")
    batch.add_argument("--parallel", type=_count(1, MAX_PARALLEL), default=1, metavar="N",
                       help="requests decoded together, their forwards merged (default %(default)s; with --ray: "
                            "per actor)")
    add_model_arguments(batch)
    batch.set_defaults(run=cmd_batch)

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (needs mlspecqd[server])")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine)")
    serve.add_argument("--port", type=_count(0, 65535), default=8080, help="port (default %(default)s; 0: any free)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    serve.add_argument("--parallel", type=_count(1, MAX_PARALLEL), default=1, metavar="N",
                       help="requests decoded together, their forwards merged (default %(default)s)")
    serve.add_argument("--max-waiting", type=_count(0, 4096), default=16,
                       help="requests that may wait while every one of the --parallel lanes is busy; more get "
                            "503 (default %(default)s)")
    serve.add_argument("-v", "--verbose", action="store_true", help="load details on stderr")
    add_model_arguments(serve)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"mlspecqd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
