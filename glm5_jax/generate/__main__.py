"""``python -m glm5_jax.generate --checkpoint DIR --prompt "..."``.

DIR is an HF checkpoint directory or a training workdir (see glm5_jax.sample.checkpoint).
Text prompts need a tokenizer.json (in DIR or via --tokenizer); otherwise pass token ids with
--prompt_ids "1,2,3". Each flag may repeat to batch several prompts. Prints the continuation
text (when a tokenizer is available); ``--json`` prints one JSON line per prompt with the new
token ids and their log-probabilities instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m glm5_jax.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="HF checkpoint directory or training workdir")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    parser.add_argument("--prompt_ids", action="append", default=[], help='comma-separated ids, e.g. "1,2,3"')
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: DIR/tokenizer.json)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--speculative_steps", type=int, default=0, help="MTP draft tokens per step")
    parser.add_argument("--json", action="store_true", help="print ids and logprobs as JSON lines")
    args = parser.parse_args(argv)
    if not args.prompt and not args.prompt_ids:
        parser.error("give at least one --prompt or --prompt_ids")
    return args


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args = parse_args(argv)
    from glm5_jax.generate import generate
    from glm5_jax.sample.checkpoint import load_for_generation, load_tokenizer

    tokenizer = load_tokenizer(args.checkpoint, args.tokenizer)
    if args.prompt and tokenizer is None:
        print(f"error: --prompt needs a tokenizer but {args.checkpoint} has no tokenizer.json; pass "
              "--tokenizer FILE or --prompt_ids", file=sys.stderr)
        return 2
    prompts = [tokenizer.encode(text).ids for text in args.prompt]
    prompts += [[int(t) for t in ids.split(",") if t.strip()] for ids in args.prompt_ids]
    model, variables = load_for_generation(args.checkpoint)
    generations = generate(model, variables, prompts, args.max_new_tokens, args.temperature, args.top_p,
                           args.top_k, args.seed, args.stop, tokenizer=tokenizer,
                           speculative_steps=args.speculative_steps)
    for prompt, generation in zip(prompts, generations):
        text = tokenizer.decode(generation.token_ids) if tokenizer is not None else None
        if args.json:
            print(json.dumps({"prompt_ids": prompt, "token_ids": generation.token_ids,
                              "logprobs": generation.logprobs, "finish_reason": generation.finish_reason,
                              "text": text}), file=out)
        else:
            print(text if text is not None else " ".join(map(str, generation.token_ids)), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
