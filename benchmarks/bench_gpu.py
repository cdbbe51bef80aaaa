"""Training tokens/s and MFU on one GPU, and generation tokens/s; random weights, nothing downloaded.

    python benchmarks/bench_gpu.py [--models 7b-trim,1b] [--rounds 5] [--json FILE]
    python benchmarks/bench_gpu.py --toy    (tiny shape, a few steps: what runs without CUDA)

Models are built from a config with random weights (``--models``, comma-separated):

  7b-trim   Llama-2-7B's shape (hidden 4096, MLP 11008, 32 heads, vocab 32000, untied) with
            ``--layers-7b`` of its 32 layers (default 8, 1.88B parameters: weights,
            gradients and AdamW moments in fp32, 30 GB, leave an 80 GB GPU room for activations)
  1b        TinyLlama-1.1B's shape (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV heads)
  toy       hidden 128, 2 layers, vocab 512 (``--toy``; also chosen when there is no CUDA)

Training: bf16 mixed precision on CUDA (fp32 master weights, ``torch.autocast`` bf16, fused
AdamW), fp32 on CPU; the same examples (random tokens with lognormal, SFT-like lengths:
``--median-tokens``, at most ``--seq-len``) batched two ways, through the project's own
collators: ``padded`` (``--batch`` examples a step padded to their longest, with an attention
mask; ``phasedsft.train.stage.Collator``) and ``packed`` (padding-free: consecutive examples
packed into rows of at most ``--seq-len`` tokens with per-example position ids and no mask,
``phasedsft.train.packing``; as many rows a step as make at most as many steps; fed as
``trainer.packing_layout=auto`` feeds them: rows padded per batch under sdpa, the batch's rows
as one sequence under flash attention). Each under
every attention implementation of ``--attn`` (default: sdpa, and flash_attention_2 where
flash-attn is installed). Generation: HF ``generate``, greedy, ``--gen-batch`` prompts of
``--prompt-len`` tokens, exactly ``--new-tokens`` new tokens each (no EOS), bf16 weights; and
vLLM on the same prompts where it is installed (in a worker process, driven round by round).

Interleaved: ``--rounds`` rounds, each round every variant of a model once (``--warmup``
untimed steps, then ``--steps`` timed ones); every ratio is taken within a round and reported
as median [min-max] over rounds. tokens/s counts real (non-padding) tokens. MFU = 6 x params x
tokens/s / peak bf16 FLOP/s (dense, from the table below by device name, or ``--peak-tflops``);
params leave out the input embedding (a lookup, no matmul) and attention's own FLOPs are not
counted, as in the usual 6N estimate. ``mfu``: real tokens; ``mfu_computed``: every token the
GPU computed, padding included. ``--json FILE`` writes every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compare import median_range, write_json

# Dense bf16 tensor-core peak, TFLOP/s (no 2:4 sparsity), from the vendors' data sheets. The
# first entry whose name is in torch.cuda.get_device_name() wins, so the longer names come first;
# None: known to be missing here, pass --peak-tflops.
PEAK_BF16_TFLOPS: list[tuple[str, float | None]] = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe, 40 and 80 GB
    ("A10G", None),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),  # fp32 accumulate
    ("RTX A6000", 155.0),
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
]

SHAPES: dict[str, dict[str, Any]] = {
    "7b-trim": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        rms_norm_eps=1e-5,
    ),  # num_hidden_layers: --layers-7b
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        rms_norm_eps=1e-5,
    ),
    "toy": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}

# Settings left unset on the command line: (full models on a GPU, toy).
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "seq_len": (2048, 128),
    "batch": (16, 4),
    "median_tokens": (256, 40),
    "steps": (8, 2),
    "warmup": (2, 1),
    "gen_batch": (32, 4),
    "prompt_len": (128, 16),
    "new_tokens": (128, 8),
}

VLLM_PREFIX = "BENCH_GPU_VLLM "


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            if value is None:
                return None, f"{key}: not in the table, pass --peak-tflops"
            return value, f"table: {key}"
    return None, "not in the table, pass --peak-tflops"


def versions() -> dict[str, str | None]:
    import torch
    import transformers

    out: dict[str, str | None] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    for name in ("flash_attn", "vllm"):
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        try:
            out[name] = getattr(__import__(name), "__version__", "installed")
        except Exception as e:  # installed but broken: say how
            out[name] = f"does not import ({type(e).__name__})"
    return out


def build_config(shape: str, args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    fields = dict(SHAPES[shape])
    if shape == "7b-trim":
        fields["num_hidden_layers"] = args.layers_7b
    return LlamaConfig(
        **fields,
        max_position_embeddings=max(args.seq_len, args.prompt_len + args.new_tokens),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=None,  # generation never stops early: every variant makes the same tokens
        pad_token_id=0,
        use_cache=False,
        attn_implementation="sdpa",
    )


def example_lengths(n: int, median: int, cap: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, max(8, int(rng.lognormvariate(math.log(median), 0.8)))) for _ in range(n)]


def prompt_ids(n: int, length: int, vocab: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


def batches(args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """The same examples, padded per batch and packed: (batches, real tokens, computed tokens)."""
    from phasedsft.prompts import IGNORE_INDEX, Encoded
    from phasedsft.train.packed import PackedCollator, PackedDataset
    from phasedsft.train.packing import pack_plan
    from phasedsft.train.stage import Collator, SequenceDataset

    lengths = example_lengths(args.steps * args.batch, args.median_tokens, args.seq_len)
    rng = random.Random(0)
    enc = {}
    for i, n in enumerate(lengths):
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        prompt = n // 4  # a prompt's tokens are not targets, as in SFT
        enc[str(i)] = Encoded(ids, [IGNORE_INDEX] * prompt + ids[prompt:])
    order = list(enc)
    padded_ds = SequenceDataset(enc, order)
    collate = Collator(pad_token_id=0)
    padded = [
        collate([padded_ds[j] for j in range(s, min(s + args.batch, len(order)))])
        for s in range(0, len(order), args.batch)
    ]
    packs = pack_plan(lengths, args.seq_len)
    rows = -(-len(packs) // args.steps)
    packed_ds = PackedDataset(enc, order, packs)
    # as trainer.packing_layout=auto feeds them: rows padded per batch under sdpa, the batch's
    # rows as one sequence under flash attention (its varlen kernels)
    packed, flat = (
        [
            PackedCollator(pad_token_id=0, flat=layout)(
                [packed_ds[j] for j in range(s, min(s + rows, len(packs)))]
            )
            for s in range(0, len(packs), rows)
        ]
        for layout in (False, True)
    )
    for b in padded + packed + flat:
        b.pop("positions")
    real = sum(lengths)
    return {
        "padded": (padded, real, sum(b["input_ids"].numel() for b in padded)),
        "packed": (packed, real, sum(b["input_ids"].numel() for b in packed)),
        "packed_flat": (flat, real, sum(b["input_ids"].numel() for b in flat)),
        "examples": len(order),
        "mean_tokens": real / len(order),
        "packed_rows": len(packs),
        "rows_per_step": rows,
    }


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model: Any, opt: Any, steps: list[dict[str, Any]], device: Any, amp: Any) -> float:
    import torch

    sync(device)
    t0 = time.perf_counter()
    for batch in steps:
        b = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        b["use_cache"] = False
        with amp():
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def hf_generate(model: Any, prompts: Any, new_tokens: int, device: Any) -> tuple[float, int]:
    import torch

    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    sync(device)
    return time.perf_counter() - t0, int((out.shape[1] - prompts.shape[1]) * out.shape[0])


class VLLMWorker:
    """vLLM in a process of its own (its GPU memory is freed only when its process ends),
    answering one timed ``generate`` of the prompts per ``run``."""

    def __init__(self, model_dir: Path, args: argparse.Namespace):
        cmd = [sys.executable, __file__, "--vllm-worker", str(model_dir)]
        for flag in ("gen_batch", "prompt_len", "new_tokens", "vllm_memory"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.read()  # ready

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(VLLM_PREFIX):
                return json.loads(line[len(VLLM_PREFIX) :])
            sys.stderr.write(line)
        raise RuntimeError(f"vLLM worker ended (exit status {self.proc.wait()})")

    def run(self) -> tuple[float, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.read()
        return out["seconds"], out["tokens"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def vllm_worker(args: argparse.Namespace) -> None:
    """The worker's side: build the engine, warm up, then one timed generate per "go" line."""
    from vllm import LLM, SamplingParams

    model_dir = Path(args.vllm_worker)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    llm = LLM(
        model=str(model_dir),
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=0,
        gpu_memory_utilization=args.vllm_memory,
        max_model_len=args.prompt_len + args.new_tokens,
    )
    prompts: Any = [
        {"prompt_token_ids": ids} for ids in prompt_ids(args.gen_batch, args.prompt_len, vocab)
    ]

    def params(n: int) -> Any:
        return SamplingParams(
            max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, detokenize=False
        )

    def say(data: dict[str, Any]) -> None:
        print(VLLM_PREFIX + json.dumps(data), flush=True)

    llm.generate(prompts, params(4), use_tqdm=False)  # warm-up: graphs, first-call costs
    say({"ready": True})
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params(args.new_tokens), use_tqdm=False)
        seconds = time.perf_counter() - t0
        say({"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)})


def bench_model(
    shape: str,
    args: argparse.Namespace,
    device: Any,
    peak: float | None,
    attns: list[str],
    per_round: dict[str, list[float]],
) -> dict[str, Any]:
    """One model shape: every training variant, then generation, in interleaved rounds."""
    import torch
    from transformers import LlamaForCausalLM

    cuda = device.type == "cuda"
    config = build_config(shape, args)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = sum(p.numel() for p in model.parameters())
    flop_params = params - model.get_input_embeddings().weight.numel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)

    def amp() -> Any:
        if cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    data = batches(args, config.vocab_size)
    train: dict[str, dict[str, Any]] = {}

    def feed(attn: str, mode: str) -> str:
        """The batches ``mode`` feeds under ``attn`` (packing: the layout auto picks)."""
        return "packed_flat" if mode == "packed" and "flash" in attn else mode

    for attn in attns:
        for mode in ("padded", "packed"):
            steps, real, computed = data[feed(attn, mode)]
            train[f"{attn}/{mode}"] = {
                "layout": "flat" if feed(attn, mode) == "packed_flat" else None,
                "steps": len(steps),
                "real_tokens": real,
                "computed_tokens": computed,
                "seconds": [],
                "max_memory_gib": None,
                "error": None,
            }
    for _ in range(args.rounds):  # interleaved: every variant once per round
        for attn in attns:
            if all(train[f"{attn}/{mode}"]["error"] for mode in ("padded", "packed")):
                continue
            try:
                model.set_attn_implementation(attn)
            except Exception as e:  # not installed, or not for this model
                for mode in ("padded", "packed"):
                    train[f"{attn}/{mode}"]["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                continue
            for mode in ("padded", "packed"):
                cell = train[f"{attn}/{mode}"]
                if cell["error"]:
                    continue
                steps = data[feed(attn, mode)][0]
                try:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    train_steps(model, opt, steps[: args.warmup], device, amp)
                    cell["seconds"].append(train_steps(model, opt, steps, device, amp))
                    if cuda:
                        gib = torch.cuda.max_memory_allocated(device) / 2**30
                        cell["max_memory_gib"] = max(cell["max_memory_gib"] or 0.0, round(gib, 2))
                except Exception as e:  # an OOM or a kernel that does not run: say so, go on
                    cell["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    opt.zero_grad(set_to_none=True)
                    if cuda:
                        torch.cuda.empty_cache()

    def done(cell: dict[str, Any]) -> bool:
        return not cell["error"] and len(cell["seconds"]) == args.rounds

    for key, cell in train.items():
        if not done(cell):
            continue
        tps = [cell["real_tokens"] / t for t in cell["seconds"]]
        per_round[f"{shape}/{key}/tokens_per_s"] = tps
        if peak:
            per_round[f"{shape}/{key}/mfu"] = [6 * flop_params * x / (peak * 1e12) for x in tps]
            per_round[f"{shape}/{key}/mfu_computed"] = [
                6 * flop_params * cell["computed_tokens"] / t / (peak * 1e12)
                for t in cell["seconds"]
            ]
    for attn in attns:
        padded, packed = train[f"{attn}/padded"], train[f"{attn}/packed"]
        if done(padded) and done(packed):  # same real tokens: the time ratio is the speed-up
            per_round[f"{shape}/{attn}/packed_over_padded"] = [
                a / b for a, b in zip(padded["seconds"], packed["seconds"], strict=True)
            ]
        if attn == "sdpa" or "sdpa" not in attns:
            continue
        for mode in ("padded", "packed"):
            base, other = train[f"sdpa/{mode}"], train[f"{attn}/{mode}"]
            if done(base) and done(other):
                per_round[f"{shape}/{mode}/{attn}_over_sdpa"] = [
                    a / b for a, b in zip(base["seconds"], other["seconds"], strict=True)
                ]

    # generation: bf16 weights on CUDA, the training state let go first
    del opt
    model.zero_grad(set_to_none=True)
    if args.grad_ckpt:
        model.gradient_checkpointing_disable()
    model.set_attn_implementation("sdpa")
    model.config.use_cache = True
    model.generation_config.eos_token_id = None
    model.eval()
    if cuda:
        model.to(torch.bfloat16)
        gc.collect()
        torch.cuda.empty_cache()
    generation: dict[str, dict[str, Any]] = {}
    if not args.no_generation:
        prompts = torch.tensor(
            prompt_ids(args.gen_batch, args.prompt_len, config.vocab_size), device=device
        )
        gens: dict[str, Any] = {"hf": lambda: hf_generate(model, prompts, args.new_tokens, device)}
        generation["hf"] = {"seconds": [], "tokens": None, "error": None}
        worker = None
        tmp = None
        if not cuda:
            generation["vllm"] = {"error": "skipped: no CUDA"}
        elif importlib.util.find_spec("vllm") is None:
            generation["vllm"] = {"error": "skipped: vllm not installed"}
        else:
            generation["vllm"] = {"seconds": [], "tokens": None, "error": None}
            try:
                tmp = tempfile.TemporaryDirectory(prefix="bench-gpu-")
                model.save_pretrained(tmp.name)
                worker = VLLMWorker(Path(tmp.name), args)
                gens["vllm"] = worker.run
            except Exception as e:
                generation["vllm"]["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        try:
            hf_generate(model, prompts[:, : max(1, args.prompt_len // 2)], 4, device)  # warm-up
            for _ in range(args.rounds):  # interleaved: every generator once per round
                for name, run in gens.items():
                    cell = generation[name]
                    if cell["error"]:
                        continue
                    try:
                        seconds, tokens = run()
                        cell["seconds"].append(seconds)
                        cell["tokens"] = tokens
                    except Exception as e:
                        cell["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            if worker is not None:
                worker.close()
            if tmp is not None:
                tmp.cleanup()
        for name, cell in generation.items():
            if not cell.get("error") and len(cell.get("seconds", [])) == args.rounds:
                per_round[f"{shape}/generate/{name}_tokens_per_s"] = [
                    cell["tokens"] / t for t in cell["seconds"]
                ]
        hf, vl = generation["hf"], generation["vllm"]
        if {f"{shape}/generate/{g}_tokens_per_s" for g in ("hf", "vllm")} <= per_round.keys():
            per_round[f"{shape}/generate/vllm_over_hf"] = [
                h / v for h, v in zip(hf["seconds"], vl["seconds"], strict=True)
            ]
    return {
        "config": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        },
        "params": params,
        "flop_params": flop_params,
        "data": {k: v for k, v in data.items() if k not in ("padded", "packed", "packed_flat")},
        "train": train,
        "generation": generation,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated: 7b-trim, 1b, toy")
    p.add_argument("--toy", action="store_true", help="the toy shape, a few steps")
    p.add_argument("--layers-7b", type=int, default=8, help="7b-trim's layers (of Llama-2-7B's 32)")
    p.add_argument("--attn", default="auto", help="comma-separated; auto: sdpa + flash_attention_2")
    for name in DEFAULTS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--no-generation", action="store_true")
    p.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s")
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    p.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.vllm_worker:
        vllm_worker(args)
        return

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.toy:
        print("no CUDA device: running the toy shape (--toy)")
        args.toy = True
    for name, (full, toy) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, toy if args.toy else full)
    models = (args.models or ("toy" if args.toy else "7b-trim,1b")).split(",")
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        p.error(f"unknown --models {unknown}; known: {', '.join(SHAPES)}")
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak, peak_source = (
        (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(name)
    )
    if not cuda and not args.peak_tflops:
        peak, peak_source = None, "cpu: no bf16 tensor-core peak (pass --peak-tflops)"
    from transformers.utils import is_flash_attn_2_available

    unavailable: dict[str, str] = {}
    if args.attn == "auto":
        attns = ["sdpa"]
        if cuda and is_flash_attn_2_available():
            attns.append("flash_attention_2")
        else:
            unavailable["flash_attention_2"] = "no CUDA" if not cuda else "flash-attn not installed"
    else:
        attns = args.attn.split(",")
    precision = "bf16 autocast, fp32 master weights" if cuda else "fp32"
    print(
        f"device: {name}; {precision}; peak bf16 {peak or 'unknown'} TFLOP/s ({peak_source}); "
        f"attention: {', '.join(attns)}" + (f" (not run: {unavailable})" if unavailable else "")
    )
    print(
        f"{args.rounds} interleaved rounds, median [min-max]; {args.warmup} warm-up + "
        f"{args.steps} timed steps per variant and round"
    )
    per_round: dict[str, list[float]] = {}
    results = {}
    for shape in models:
        res = bench_model(shape, args, device, peak, attns, per_round)
        results[shape] = res
        gc.collect()  # the model is gone with bench_model's frame: free its memory now
        if cuda:
            torch.cuda.empty_cache()
        d = res["data"]
        print(
            f"\n{shape}: {res['params'] / 1e6:.1f}M params ({res['config']['num_hidden_layers']} "
            f"layers, hidden {res['config']['hidden_size']}); {d['examples']} examples, mean "
            f"{d['mean_tokens']:.0f} tokens, padded: {args.batch} a step, packed: "
            f"{d['packed_rows']} rows of <= {args.seq_len}, {d['rows_per_step']} a step"
        )
        for key, cell in res["train"].items():
            if cell["error"]:
                print(f"  train {key:<28} failed: {cell['error']}")
                continue
            t = median_range(per_round[f"{shape}/{key}/tokens_per_s"])
            mfu = per_round.get(f"{shape}/{key}/mfu")
            mfu_s = ""
            if mfu:
                m = median_range(mfu)
                mfu_s = f"  MFU {m['median']:.1%} [{m['min']:.1%}-{m['max']:.1%}]"
            mem = f"  {cell['max_memory_gib']} GiB" if cell["max_memory_gib"] else ""
            print(
                f"  train {key:<28} {t['median']:10.0f} real tokens/s [{t['min']:.0f}-"
                f"{t['max']:.0f}]  real/computed {cell['real_tokens'] / cell['computed_tokens']:.2f}"
                f"{mfu_s}{mem}"
            )
        for gname, cell in res["generation"].items():
            key = f"{shape}/generate/{gname}_tokens_per_s"
            if key not in per_round:
                print(f"  generate {gname:<25} {cell.get('error') or 'incomplete'}")
                continue
            t = median_range(per_round[key])
            print(
                f"  generate {gname:<25} {t['median']:10.0f} new tokens/s [{t['min']:.0f}-"
                f"{t['max']:.0f}]  ({args.gen_batch} x {args.new_tokens} after {args.prompt_len})"
            )
        for key in per_round:
            if key.startswith(f"{shape}/") and ("_over_" in key):
                m = median_range(per_round[key])
                print(
                    f"  {key[len(shape) + 1 :]:<34} {m['median']:.2f}x [{m['min']:.2f}-{m['max']:.2f}]"
                )
    summary = {k: median_range(v) for k, v in per_round.items()}
    write_json(
        args.json,
        {
            "bench": "gpu",
            "toy": args.toy,
            "device": name,
            "precision": precision,
            "peak_tflops": peak,
            "peak_source": peak_source,
            "versions": versions(),
            "attn": attns,
            "attn_not_run": unavailable,
            "settings": {
                **{k: getattr(args, k) for k in DEFAULTS},
                "rounds": args.rounds,
                "layers_7b": args.layers_7b,
                "grad_ckpt": args.grad_ckpt,
            },
            "models": results,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
