#!/usr/bin/env python
"""python benchmarks/bench_memory.py [--layers 12] [--width 768] [--vocab 2000] [--work DIR] [--only PREFIX ...]

Peak resident memory of a `landscape` sweep of a GPT-2-small-shaped causal LM (12 layers x 768 wide, a vocabulary
of 2000 from a byte-level BPE tokenizer trained here: about 87M parameters, 347 MB in float32), built from a config
and saved with save_pretrained, swept 3x3 over 8 test blocks of 128 tokens of a generated text file. Each setting runs
as its own process; its peak resident memory is the one the run logs (engine.core.memory: the largest of its stages'
peaks plus the resident set it started from). The process's own "Maximum resident set size" cannot be used: the
engine resets the high-water mark at each stage, so at exit it holds the last stage's. The baseline is a process
that imports the engine's CLI, torch and transformers (no model), under `/usr/bin/time -v` (it resets nothing), in
the same run. Printed per setting: peak RSS, peak beyond the baseline, that over the weights' float32 bytes ("x the
weights": the model itself, theta*, the two directions and the activations together; the floor is about 4) and in
bytes per parameter, and wall time. A process's fixed costs grow past the imports once it runs: the model family's
code (transformers' GPT-2 module imports torch._dynamo, sympy, scipy and torchvision: "x w, code" is the peak beyond a
baseline that imports it too), the tokenizer and the tokenized text, the pages of torch's and transformers' libraries
that the first forward touches, the store's codecs.
So each setting also runs on a GPT-2 of 1 layer x 96 (the same tokenizer), and the last column is the difference of
the two runs' peaks over the difference of their parameters: the bytes each parameter of the model costs.

Settings: the engine's own choices (batch size and K timed); eval.batch_size=8 eval.points_per_pass=1; that with
direction.dtype=bfloat16; that with model.dtype=bfloat16 on a 2x2 grid of 2 blocks (bfloat16 matmuls are slow on CPUs
without bfloat16 units; x the weights still counts float32 weights); that on 2 torchrun ranks with parallel.shard=2,
one row per rank, each rank reading only its rows of the weights (parallel.load=auto), and the same with every rank
loading the whole model first (parallel.load=whole, the way sharded runs loaded before); batch 8, K=1 with the
default epsilon- and adaptive sharpness on (its "curvature" stage: theta*, the step and the gradient beside the
model, and one gradient batch's graph within eval.memory_gb), in one process and on 2 ranks with parallel.shard=2.
Each run's per-stage peaks (from its log) are printed beside it.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the default epsilon- and adaptive sharpness (the common settings turn them off), with fewer steps: their memory
# does not depend on the step count
SHARPNESS = ["summary.epsilon=1e-3", "summary.adaptive_radius=0.01", "summary.epsilon_steps=3",
             "summary.adaptive_steps=3", "summary.adaptive_samples=2", "summary.sharpness_samples=8"]
WORDS = ["the", "model", "loss", "basin", "sharp", "flat", "minimum", "weight", "direction", "plane", "grid", "point",
         "curve", "valley", "ridge", "step", "data", "train", "test", "batch", "layer", "norm", "label", "path"]
BASE = "import engine.app.cli, torch, transformers"  # the process baseline: what any run imports, no model
# the same with the model family's code imported: transformers' GPT-2 module pulls in torch._dynamo, sympy, scipy and
# torchvision (about 2000 modules, 0.23 GB here), a fixed cost of any GPT-2 whatever its size
CODE_BASE = BASE + "; import transformers.models.gpt2.modeling_gpt2"
COUNT = ("import transformers; m = transformers.AutoModelForCausalLM.from_pretrained({path!r}); "
         "print(sum(p.numel() for p in m.parameters()))")


def write_model(folder: Path, layers: int, width: int, vocab: int) -> None:
    """The tokenizer trained on the corpus and a seeded GPT-2 of this shape, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    text = (folder.parent / "corpus.txt").read_text()
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", bos_token="<|endoftext|>", model_max_length=128)
    tokenizer.save_pretrained(folder)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=12, n_positions=128, vocab_size=len(tokenizer),
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(folder)


def peak(cmd: list[str], cwd: Path) -> tuple[int, float, str]:
    """(maximum resident set size in bytes, wall seconds, stdout) of cmd run under /usr/bin/time -v."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return kb * 1024, seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--work", default=None, help="folder for the model and runs (default: a temporary one)")
    parser.add_argument("--only", nargs="*", default=None, help="run only the settings whose names start so")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = work / "corpus.txt"
    if not corpus.exists():  # 80 test blocks of 128 tokens at the default test fraction: enough for 8
        corpus.write_text(" ".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 12))).capitalize() + "."
                                   for _ in range(12000)))
    model = work / "model"
    if not (model / "model.safetensors").exists():
        write_model(model, args.layers, args.width, args.vocab)
    tiny = work / "tiny"
    if not (tiny / "model.safetensors").exists():
        write_model(tiny, 1, 96, args.vocab)
    params, tiny_params = (int(subprocess.run([sys.executable, "-c", COUNT.format(path=str(m))], capture_output=True,
                                              text=True, check=True).stdout.strip().splitlines()[-1])
                           for m in (model, tiny))
    base, code_base = (peak([sys.executable, "-c", b], work)[0] for b in (BASE, CODE_BASE))
    weights = 4 * params
    print(f"GPT-2 {args.layers} layers x {args.width}, vocab {args.vocab}: {params / 1e6:.1f}M parameters, "
          f"{weights / 1e6:.0f} MB in float32; process baseline (the imports, no model) {base / 1e9:.2f} GB peak, "
          f"{code_base / 1e9:.2f} GB with GPT-2's code imported too (x w, code: beyond that one)")
    common = ["model=hf", "data=text", f"data.path={corpus}", "loss=causal_lm",
              "grid.resolution=[3,3]", "grid.preview=0", "eval.samples=8", "summary.epsilon=null",
              "summary.adaptive_radius=null", "eval.progress=false", "plot.formats=[png]"]
    k1 = ["eval.batch_size=8", "eval.points_per_pass=1"]
    settings: dict[str, tuple[list[str], int]] = {
        "engine's choices": ([], 1), "batch 8, K=1": (k1, 1), "  + bf16 dirs": ([*k1, "direction.dtype=bfloat16"], 1),
        "on access, K=1": ([*k1, "eval.perturb=on_access"], 1),
        "on access + bf16 dirs": ([*k1, "eval.perturb=on_access", "direction.dtype=bfloat16"], 1),
        "bf16 model (2x2, 2)": ([*k1, "model.dtype=bfloat16", "grid.resolution=[2,2]", "eval.samples=2"], 1),
        "2 ranks, S=2": ([*k1, "parallel.shard=2"], 2),
        "2 ranks, S=2, whole": ([*k1, "parallel.shard=2", "parallel.load=whole"], 2),
        "sharpness on (K=1)": ([*k1, *SHARPNESS], 1),
        "sharpness on, 2x S=2": ([*k1, *SHARPNESS, "parallel.shard=2"], 2)}
    if args.only is not None:
        settings = {k: v for k, v in settings.items() if any(k.startswith(p) for p in args.only)}
    print(f"{'setting':<28}{'peak GB':>9}{'beyond base GB':>16}{'x weights':>11}{'x w, code':>11}"
          f"{'bytes/param':>13}{'s/point':>9}{'B/param vs 1x96':>17}   "
          "stages: peak (what it leaves held), bytes/param beyond the run's start")
    for k, (name, (extra, nproc)) in enumerate(settings.items()):
        cli = [sys.executable, "-c", "from engine.app.cli import main; main()"] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
            "engine.sweep"]
        for tag, folder in (("", model), ("tiny", tiny)):
            peak([*cli, *common, *extra, f"model.path={folder}", f"name=run{k}{tag}", f"out_dir={work / 'runs'}",
                  "store.overwrite=true"], work)
        for rank in range(nproc):
            logs = [work / "runs" / f"run{k}{tag}" / "logs" / f"rank{rank}.log" for tag in ("", "tiny")]
            (rss, by_stage), (tiny_rss, _) = logged_peak(logs[0]), logged_peak(logs[1])
            beyond = rss - base
            per_param = (rss - tiny_rss) / (params - tiny_params)
            label = name if nproc == 1 else f"{name}, rank {rank}"
            print(f"{label:<28}{rss / 1e9:>9.2f}{beyond / 1e9:>16.2f}{beyond / weights:>11.2f}"
                  f"{(rss - code_base) / weights:>11.2f}{beyond / params:>13.1f}{point_seconds(logs[0]):>9.2f}"
                  f"{per_param:>17.1f}   {by_stage}")
    print("s/point: the sweep's seconds per grid point from rank 0's tile lines (torchrun gives each rank one thread, "
          "a single process takes the machine's threads)")


def point_seconds(log: Path) -> float:
    """Seconds per grid point of the sweep, from the tile lines a rank logs ('(N points) in S s')."""
    tiles = re.findall(r"\((\d+) points\) in ([\d.]+) s", log.read_text())
    return sum(float(s) for _, s in tiles) / max(1, sum(int(n) for n, _ in tiles))


def logged_peak(log: Path) -> tuple[int, str]:
    """(the run's peak resident bytes, its per-stage line) from the two lines engine.core.memory logs."""
    text = log.read_text()
    run = re.findall(r"peak memory ([\d.]+) GB beyond the process base of ([\d.]+) GB", text)
    stages = re.findall(r"peak memory by stage, bytes per parameter: (.*)", text)
    if not run or not stages:
        sys.exit(f"{log} has no peak memory lines")
    return int((float(run[-1][0]) + float(run[-1][1])) * 1e9), stages[-1]


if __name__ == "__main__":
    main()
