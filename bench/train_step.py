"""One GRPO step against a bare forward and backward of the same model and batch (issue 9).

Imports only babylon_assets.training.grpo, torch, transformers and peft, so it also runs on a GPU machine
with its own Python and no network: the model is SmolLM2-135M's architecture with random weights
(timing does not depend on the weights) unless --model names a local Hugging Face folder.

    python bench/train_step.py                       # CPU here; CUDA when a GPU is visible
    python bench/train_step.py --device cuda --batch 16 --prompt-tokens 1024 --response-tokens 128

Prints, for each: median seconds over --repeats (after one warm-up), tokens per second, peak memory,
and the ratio GRPO step / bare forward+backward (goal: within 1.2x).

- bare: model(input_ids, labels=assistant tokens) then backward, micro-batch by micro-batch; no step.
- grpo: babylon_assets.training.grpo.grpo_step: the same micro-batches, log-probs of the trained tokens,
  the clipped-ratio / advantage-weighted loss, backward, gradient clipping and the AdamW step.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

# The package's __init__ files import nothing, so this pulls in training/grpo.py alone (no settings, no
# database, no Dagster): the bench runs from a bare checkout on a machine with only torch,
# transformers and peft.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from babylon_assets.training import grpo  # noqa: E402


def build_model(args: argparse.Namespace, device: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if args.model:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:  # SmolLM2-135M-Instruct's shape
        config = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        )
        base = LlamaForCausalLM(config)
    base = base.to(device)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    return get_peft_model(base, lora)


def build_samples(args: argparse.Namespace, vocab: int) -> list:
    """Random token ids in the shape of the batch; with --shared-prefix-tokens, every --seats consecutive samples
    begin with the same that many tokens (the seats of one decision: the rules and the market)."""
    rng = random.Random(1)
    samples = []
    prefixes: dict[int, list[int]] = {}
    for i in range(args.batch):
        prompt = args.prompt_tokens - rng.randrange(0, max(1, args.prompt_tokens // 4))
        response = args.response_tokens - rng.randrange(0, max(1, args.response_tokens // 4))
        shared = min(args.shared_prefix_tokens, prompt - 1)
        if i // args.seats not in prefixes:
            prefixes[i // args.seats] = [rng.randrange(100, vocab) for _ in range(args.shared_prefix_tokens)]
        ids = prefixes[i // args.seats][:shared] + [
            rng.randrange(100, vocab) for _ in range(prompt - shared + response)
        ]
        mask = [False] * prompt + [True] * response
        samples.append(
            grpo.Sample(ids, mask, [float("nan")] * len(ids), advantage=(-1.0) ** i * 0.8, assistant_messages=1)
        )
    return samples


def bare_forward_backward(model, samples, micro: int, device: str) -> int:
    """The baseline: a plain causal-LM loss on the same tokens, full logits as `labels=` computes them."""
    tokens = 0
    model.zero_grad(set_to_none=True)
    for chunk in grpo.micro_batches(samples, micro, share_prefix=False):
        batch = grpo.collate(chunk, 0, device, share_prefix=False)
        labels = torch.full_like(batch.input_ids, -100)
        width = batch.keep - 1
        labels[:, -width:] = torch.where(batch.target_mask, batch.input_ids[:, -width:], -100)
        output = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            labels=labels,
            use_cache=False,
        )
        output.loss.backward()
        tokens += int(batch.attention_mask.sum())
    model.zero_grad(set_to_none=True)
    return tokens


def bare_kept_forward_backward(model, samples, micro: int, device: str) -> int:
    """A tighter baseline: the same forward as the GRPO step (logits of the trained positions only) with a
    plain mean log-likelihood; the gap to the GRPO step is then our loss, clipping and optimizer step alone."""
    tokens = 0
    model.zero_grad(set_to_none=True)
    for chunk in grpo.micro_batches(samples, micro, share_prefix=False):
        batch = grpo.collate(chunk, 0, device, share_prefix=False)
        logprobs = grpo.token_logprobs(model, batch)
        (-torch.where(batch.target_mask, logprobs, 0.0).sum() / batch.target_mask.sum()).backward()
        tokens += int(batch.attention_mask.sum())
    model.zero_grad(set_to_none=True)
    return tokens


class PeakRss:
    """The resident set's peak above its level at the start, sampled every 2 ms (CPU runs)."""

    def __init__(self) -> None:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> tuple[float, list[float], float]:
    """Median seconds, every run, and peak memory in MB (CUDA: allocated; CPU: resident above the start)."""
    fn()  # warm-up (allocator, kernels)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - started)
    memory = torch.cuda.max_memory_allocated() if device == "cuda" else rss.peak - rss.start
    return statistics.median(times), times, memory / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="a local Hugging Face folder (default: SmolLM2-135M's shape, random weights)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=192)
    parser.add_argument("--response-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kl", type=float, default=0.1, help="also time a step with this KL coefficient (0: skip)")
    parser.add_argument("--shared-prefix-tokens", type=int, default=0, help="the prompt tokens --seats samples share")
    parser.add_argument("--seats", type=int, default=8, help="samples per shared prefix")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model = build_model(args, args.device)
    samples = build_samples(args, model.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    config = grpo.StepConfig(micro_batch_size=args.micro_batch, pad_token_id=0)
    kl_config = grpo.StepConfig(micro_batch_size=args.micro_batch, pad_token_id=0, kl_coef=args.kl)
    total_tokens = sum(len(s.input_ids) for s in samples)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"device {args.device} ({where}), "
        f"torch {torch.__version__}; {args.batch} sequences, {total_tokens} tokens "
        f"({sum(s.trained_tokens for s in samples)} trained), micro-batch {args.micro_batch}"
    )
    rows = []
    bare_s, bare_all, bare_mem = timed(
        lambda: bare_forward_backward(model, samples, args.micro_batch, args.device), args.repeats, args.device
    )
    rows.append(("bare forward + backward (full logits)", bare_s, bare_all, bare_mem))
    kept_s, kept_all, kept_mem = timed(
        lambda: bare_kept_forward_backward(model, samples, args.micro_batch, args.device), args.repeats, args.device
    )
    rows.append(("bare, trained positions' logits only", kept_s, kept_all, kept_mem))
    step_s, step_all, step_mem = timed(
        lambda: grpo.grpo_step(model, optimizer, samples, config), args.repeats, args.device
    )
    rows.append(("GRPO step", step_s, step_all, step_mem))
    if args.shared_prefix_tokens:
        unshared = grpo.StepConfig(micro_batch_size=args.micro_batch, pad_token_id=0, share_prefix=False)
        plain_s, plain_all, plain_mem = timed(
            lambda: grpo.grpo_step(model, optimizer, samples, unshared), args.repeats, args.device
        )
        rows.append(("GRPO step, each row its own prefix", plain_s, plain_all, plain_mem))
    if args.kl > 0:
        kl_s, kl_all, kl_mem = timed(
            lambda: grpo.grpo_step(model, optimizer, samples, kl_config, reference=model.disable_adapter),
            args.repeats,
            args.device,
        )
        rows.append((f"GRPO step + KL {args.kl} (reference forward)", kl_s, kl_all, kl_mem))
    print(f"{'':44} {'median s':>9} {'tokens/s':>9} {'peak MB':>9} {'ratio':>6}   runs")
    for name, median, runs, memory in rows:
        print(
            f"{name:44} {median:9.3f} {total_tokens / median:9.0f} {memory:9.0f} {median / bare_s:6.2f}   "
            + " ".join(f"{t:.3f}" for t in runs)
        )
    ratio = step_s / bare_s
    verdict = "met" if ratio <= 1.2 else "NOT met"
    print(
        f"GRPO step / bare forward+backward = {ratio:.2f}x (goal within 1.2x): {verdict}; "
        f"against the same forward with a plain loss: {step_s / kept_s:.2f}x"
    )
    if args.shared_prefix_tokens:
        print(
            f"GRPO step, the shared prefix forwarded once / each row its own: {step_s / plain_s:.2f}x "
            "(the bare baselines forward every row whole)"
        )
    print(
        "peak MB: "
        + (
            "CUDA memory allocated"
            if args.device == "cuda"
            else "resident memory above the phase's start (the model and its first-run buffers are below it)"
        )
    )


if __name__ == "__main__":
    main()
