"""One training step on the CPU: minillama (NumPy) against torch eager (transformers), in one run.

    python benchmarks/train_speed.py [--repeats 3] [--steps 5] [--warmup 2] [--threads 2]
                                     [--libs minillama eager sdpa] [--breakdown-only]

The model is the ``demo`` preset's shape (vocab 4096, hidden 256, 6 layers, 8 heads, 4 key/value
heads, intermediate 768, untied embeddings), random float32 weights written once with
transformers' ``save_pretrained``, so every library starts from the very same file. One step is
what the demo training does: forward, backward, gradient clipping to norm 1.0, an AdamW step
(lr 1e-3, betas 0.9/0.95, weight decay 0.1), on a random 8 x 256 token batch (labels = inputs).

Each measurement runs in its own process (so one library's idle threads never slow the other, and
each has its own memory high-water mark), the libraries alternating, ``--repeats`` times. A
process takes ``--warmup`` untimed steps, then ``--steps`` timed ones; its figure is the median.
Reported: tokens/s (batch * seq / step time), the ratio minillama / torch, and the peak resident
memory of the process (``ru_maxrss``), raw and above what the interpreter held after its imports.

The breakdown (minillama only, one more process) times every ``minillama.functional`` call the
training step makes and its blocked causal attention (``fast.train_attention``), by function,
split into the forward and the backward pass (a forward function called during the backward is a
recomputation), plus clipping and the optimizer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DEMO = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
            intermediate_size=768, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False)
BATCH, SEQ = 8, 256
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0
LIBS = ("minillama", "eager", "sdpa")  # eager and sdpa: transformers' attn_implementation


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_checkpoint(folder):
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**DEMO))
    with torch.no_grad():  # a useful scale, so the loss and gradients are not near zero
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    model.save_pretrained(folder)


def token_batch(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, DEMO["vocab_size"], size=(BATCH, SEQ))


def writable(model):
    """The model with every weight still memory-mapped from the file replaced by an in-memory copy
    (the fused and column-major arrays of the default NumPy layout are copies already)."""
    from dataclasses import fields, replace
    w = model.weights
    copy = {}  # id -> copy, so a weight shared by two fields stays shared
    def own(a):
        if a is None or a.flags.writeable:
            return a
        return copy.setdefault(id(a), np.array(a))
    w.layers = [replace(layer, **{f.name: own(getattr(layer, f.name)) for f in fields(layer)}) for layer in w.layers]
    w.embed_tokens, w.norm, w.lm_head = own(w.embed_tokens), own(w.norm), own(w.lm_head)
    return model


def minillama_stepper(folder):
    """A function doing one training step of minillama (in the default NumPy weight layout)."""
    import minillama
    from minillama.train import AdamW, clip_grad_norm, loss_and_grads
    model = writable(minillama.load(folder))
    optimizer = AdamW(model.state_dict(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    ids = token_batch()

    def step():
        loss, grads = loss_and_grads(model, ids)
        clip_grad_norm(grads, CLIP)
        optimizer.step(grads)
        return loss
    return step


def torch_stepper(folder, attention: str):
    import torch
    import transformers
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                          attn_implementation=attention).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    ids = torch.as_tensor(token_batch())

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        return float(loss.detach())
    return step


def worker(lib, folder, steps, warmup, threads):
    """Time ``steps`` training steps of one library after ``warmup`` ones, in this fresh process. Prints JSON."""
    if lib == "minillama":  # torch is not imported here: its threads must not compete with OpenBLAS's
        from minillama.fast import tune_malloc
        tune_malloc()  # as the minillama command does
        import minillama  # noqa: F401
        base = current_rss_bytes()
        step = minillama_stepper(folder)
    else:
        import torch
        import transformers  # noqa: F401
        torch.set_num_threads(threads)
        base = current_rss_bytes()
        step = torch_stepper(folder, lib)
    losses = [step() for _ in range(warmup)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    print(json.dumps(dict(times=times, losses=losses, peak_rss=peak_rss_bytes(), base_rss=base)))


def breakdown_worker(folder, steps, warmup):
    """Seconds per step in each minillama.functional function (forward / backward), clipping and AdamW."""
    from minillama import functional as F
    from minillama import train
    from minillama.fast import tune_malloc
    from minillama.train import optim
    tune_malloc()
    totals, phase = {}, ["forward"]

    def timed(name, function, starts_backward=False, fixed_phase=None):
        def wrapper(*args, **kwargs):
            if starts_backward:
                phase[0] = "backward"
            start = time.perf_counter()
            out = function(*args, **kwargs)
            key = f"{fixed_phase or phase[0]}: {name}"
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    for name in [n for n in F.__all__ if callable(getattr(F, n))]:
        setattr(F, name, timed(name, getattr(F, name), starts_backward=name == "causal_lm_loss_backward"))
    from minillama.train import backprop  # the training step's own attention pair (fast.train_attention)
    pair = backprop.CAUSAL_BLOCKS
    backprop.CAUSAL_BLOCKS = backprop.AttentionPair(pair.name, timed("causal_attention (fast)", pair.forward),
                                                    timed("causal_attention_backward (fast)", pair.backward))
    optim_step = optim.AdamW.step
    optim.AdamW.step = lambda self, grads, lr=None: timed("AdamW.step", optim_step, fixed_phase="optimizer")(self, grads, lr)
    train.clip_grad_norm = timed("clip_grad_norm", optim.clip_grad_norm, fixed_phase="optimizer")
    step_fn = minillama_stepper(folder)
    for _ in range(warmup):
        step_fn()
    totals.clear()
    whole = []
    for _ in range(steps):
        phase[0] = "forward"
        start = time.perf_counter()
        step_fn()
        whole.append(time.perf_counter() - start)
    per_step = {k: v / steps for k, v in totals.items()}
    per_step["(everything else: reshapes, residual adds, Python)"] = statistics.mean(whole) - sum(per_step.values())
    print(json.dumps(dict(step=statistics.mean(whole), parts=per_step)))


def run_worker(args, *extra):
    """One worker process; OpenBLAS gets the same number of threads as torch."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, __file__, *extra, "--folder", args.folder, "--steps", str(args.steps),
                          "--warmup", str(args.warmup), "--threads", str(args.threads)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"worker {extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(runs, libs):
    """Median and best step of each library, tokens/s, ratios against minillama, peak memory."""
    tokens = BATCH * SEQ
    med = {lib: statistics.median(statistics.median(r["times"]) for r in runs[lib]) for lib in libs}
    best = {lib: min(min(r["times"]) for r in runs[lib]) for lib in libs}
    peak = {lib: max(r["peak_rss"] for r in runs[lib]) for lib in libs}
    above = {lib: max(r["peak_rss"] - r["base_rss"] for r in runs[lib]) for lib in libs}
    ours = "minillama" in libs
    print(f"{'library':10s} {'step s':>7s} {'tokens/s':>9s} {'min-max tok/s':>15s} {'ratio':>6s} {'best tok/s':>10s} "
          f"{'ratio':>6s} {'peak RSS MiB':>12s} {'above imports':>13s} {'mem ratio':>9s}  loss after warmup")
    for lib in libs:
        rates = [tokens / statistics.median(r["times"]) for r in runs[lib]]
        ratio = f"{med[lib] / med['minillama']:5.2f}x" if ours else ""
        best_ratio = f"{best[lib] / best['minillama']:5.2f}x" if ours else ""
        mem = f"{above['minillama'] / above[lib]:8.2f}x" if ours else ""
        print(f"{lib:10s} {med[lib]:7.3f} {tokens / med[lib]:9.0f} {min(rates):7.0f}-{max(rates):<7.0f} "
              f"{ratio:>6s} {tokens / best[lib]:10.0f} {best_ratio:>6s} {peak[lib] / 2**20:12.0f} "
              f"{above[lib] / 2**20:13.0f} {mem:>9s}  {runs[lib][0]['losses'][-1]:.4f}")
    print("ratio: minillama tokens/s over this library's (above 1: minillama faster), of the medians and of the best "
          "steps (on a busy machine the best step is the least disturbed); mem ratio: minillama's peak above imports "
          "over this library's (below 1: minillama smaller)")
    return dict(median_s=med, best_s=best, peak_rss=peak, peak_above_imports=above)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    parser.add_argument("--breakdown-only", action="store_true")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "minillama-train-speed"))
    parser.add_argument("--worker", choices=LIBS + ("breakdown",), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "breakdown":
        return breakdown_worker(args.folder, args.steps, args.warmup)
    if args.worker:
        return worker(args.worker, args.folder, args.steps, args.warmup, args.threads)

    args.folder = os.path.join(args.workdir, "demo")
    if not os.path.exists(os.path.join(args.folder, "config.json")):
        make_checkpoint(args.folder)
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()} {cpu}, {os.cpu_count()} cores, "
          f"threads {args.threads}; NumPy {np.__version__}, torch {torch.__version__}; batch {BATCH} x {SEQ} tokens")
    runs = {lib: [] for lib in args.libs}
    if not args.breakdown_only:
        for _ in range(args.repeats):
            for lib in args.libs:
                runs[lib].append(run_worker(args, "--worker", lib))
        print_table(runs, args.libs)
    result = run_worker(args, "--worker", "breakdown")
    print(f"\nminillama breakdown, seconds per step (step {result['step']:.3f} s, timed with wrappers):")
    for name, seconds in sorted(result["parts"].items(), key=lambda item: -item[1]):
        print(f"  {seconds:7.3f} {seconds / result['step']:6.1%}  {name}")


if __name__ == "__main__":
    main()
