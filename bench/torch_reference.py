#!/usr/bin/env python
"""In-session PyTorch reference for `bench/training.py`: the same networks and training steps in PyTorch.

Fixed images/s figures from another session or machine say nothing about this one, and the
authors' code cannot be fetched here. This script is an independent PyTorch implementation of
the same computation, written from the paper's description, so that both frameworks are timed
in one session on one machine (the suite's only comparison with PyTorch):

* network: x − 0.5 → conv k5 s2 p2 (3 → W) → MinMax → L × (one 3×3 conv with the merged kernel
  Δ + β·V/√L → MinMax) → conv k4 s4 (W → 2W) → MinMax → flatten → dense 512 → MinMax → LLN dense;
* plain step: cross-entropy, AdamW(1e-3, weight decay 1e-4), global-norm clipping at 3;
* GloRo step ("gloro"): the same plus, for each of the L + 3 linear layers, 10 power-iteration
  steps `u ← AᵀAu/‖AᵀAu‖` on a persistent iterate (autograd through every step, like
  `bound_gradient="full"`), K = Π‖A_l u_l‖, LLN margin bounds K·‖ŵ_t − ŵ_i‖ and the EMMA loss
  CE(y_i + ε·K_ti, t);
* "gloro_last": the same with the 10 steps run without autograd and the gradient through the final
  ‖A_l u_l‖ only (like `bound_gradient="last"`, gloro-keras's default): what the authors' released
  code computes, whose loop is followed by `x.detach()` before the final convolution;
* with --bf16, also both steps with the network's forward under `torch.autocast` (bfloat16) and
  the bound and loss in float32, like gloro-keras's `train_dtype="bfloat16"`.

    python bench/torch_reference.py --configs L6W64,L6W128 --repeats 5      # prints JSON
    python bench/torch_reference.py --serve      # one step per JSON request on stdin (`serve`)

Run with an interpreter that has torch (`pip install torch`); `bench/training.py` and
`bench/run.py` (`--torch-python PATH`) keep it running with `--serve` and time its steps in the
same rotating rounds as their own.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import step_statistics  # noqa: E402  (standard library only: runs in a torch-only venv)


def minmax(z):
    a, b = z.chunk(2, dim=1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class LiResNet(torch.nn.Module):
    def __init__(self, L, W, classes=10, dense=512, size=32, channels_last=False):
        super().__init__()
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        P = torch.nn.Parameter
        self.L, self.W = L, W
        self.stem_w, self.stem_b = P(torch.empty(W, 3, 5, 5)), P(torch.zeros(W))
        torch.nn.init.orthogonal_(self.stem_w)
        self.V = P(torch.randn(L, W, W, 3, 3) / (9 * W))
        self.beta, self.bias = P(torch.ones(L, W)), P(torch.zeros(L, W))
        self.neck_w, self.neck_b = P(torch.empty(2 * W, W, 4, 4)), P(torch.zeros(2 * W))
        torch.nn.init.orthogonal_(self.neck_w)
        s = size // 2
        self.dense_w, self.dense_b = P(torch.empty(dense, 2 * W * (s // 4) ** 2)), P(torch.zeros(dense))
        torch.nn.init.orthogonal_(self.dense_w)
        self.head_w, self.head_b = P(torch.randn(classes, dense) / math.sqrt(dense)), P(torch.zeros(classes))
        delta = torch.zeros(W, W, 3, 3)
        delta[range(W), range(W), 1, 1] = 1.0
        self.register_buffer("delta", delta)
        # Persistent power-iteration iterates, shaped like each layer's input.
        self.iterates = [torch.randn(1, 3, size, size)] + [torch.randn(1, W, s, s) for _ in range(L)] + \
                        [torch.randn(1, W, s, s), torch.randn(1, self.dense_w.shape[1])]
        if channels_last:
            for p in (self.stem_w, self.neck_w):
                p.data = p.data.contiguous(memory_format=self.fmt)
            self.iterates = [u.contiguous(memory_format=self.fmt) if u.dim() == 4 else u for u in self.iterates]

    def block_kernels(self):
        ks = self.delta + self.V * (self.beta / math.sqrt(self.L))[:, :, None, None, None]
        return [k.contiguous(memory_format=self.fmt) for k in ks]

    def forward(self, x):
        ks = self.block_kernels()
        z = minmax(F.conv2d(x - 0.5, self.stem_w, self.stem_b, stride=2, padding=2))
        for i in range(self.L):
            z = minmax(F.conv2d(z, ks[i], self.bias[i], padding=1))
        z = minmax(F.conv2d(z, self.neck_w, self.neck_b, stride=4))
        z = minmax(F.linear(z.flatten(1), self.dense_w, self.dense_b))
        return F.linear(z, self.head_w / self.head_w.norm(dim=1, keepdim=True), self.head_b)

    def lipschitz_bound(self, iterations=10, gradient="full"):
        """K = Π_l ‖A_l u_l‖ after `iterations` power steps per layer: differentiable through every
        step (`gradient="full"`), or only through the final ‖A_l u_l‖ with the steps run without
        autograd (`"last"`: what the authors' released code does, where the iterate is detached
        after the loop)."""
        ks = self.block_kernels()
        ops = [(lambda u: F.conv2d(u, self.stem_w, stride=2, padding=2),
                lambda v: F.conv_transpose2d(v, self.stem_w, stride=2, padding=2, output_padding=1))]
        ops += [(lambda u, k=k: F.conv2d(u, k, padding=1), lambda v, k=k: F.conv_transpose2d(v, k, padding=1))
                for k in ks]
        ops += [(lambda u: F.conv2d(u, self.neck_w, stride=4), lambda v: F.conv_transpose2d(v, self.neck_w, stride=4)),
                (lambda u: F.linear(u, self.dense_w), lambda v: v @ self.dense_w)]
        K = 1.0
        for j, (fwd, adj) in enumerate(ops):
            u = self.iterates[j]
            u = u / u.norm()
            with torch.set_grad_enabled(gradient == "full" and torch.is_grad_enabled()):
                for _ in range(iterations):
                    w = adj(fwd(u))
                    u = w / w.norm()
            self.iterates[j] = u.detach()
            K = K * fwd(u).norm()
        return K


DEVICE = "cpu"  # --device


def emma_loss(model, x, y, epsilon, bf16=False, gradient="full"):
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    logits = logits.float()
    K = model.lipschitz_bound(gradient=gradient)
    w = model.head_w / model.head_w.norm(dim=1, keepdim=True)
    kij = K * torch.cdist(w, w)                        # K·‖ŵ_i − ŵ_j‖ (0 on the diagonal)
    return F.cross_entropy(logits + epsilon * kij[y], y)


def make_step(model, variant, epsilon=36 / 255):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    bf16 = variant.endswith("_bf16")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        if variant.startswith("plain"):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        else:
            loss = emma_loss(model, x, y, epsilon, bf16, "last" if "_last" in variant else "full")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        return loss.item()

    return step


def setup_config(L, W, fmt, bf16=False, batch=256, seed=0):
    """Models, step functions and data of one config and memory format, each step run twice
    (warm-up). Returns ({variant: step}, {variant: first step s}, x, y)."""
    torch.manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32).to(DEVICE)
    y = torch.randint(0, 10, (batch,)).to(DEVICE)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    steps, first = {}, {}
    for variant in ("plain", "gloro", "gloro_last") + (("plain_bf16", "gloro_bf16", "gloro_last_bf16") if bf16 else ()):
        model = LiResNet(L, W, channels_last=fmt == "channels_last").to(DEVICE)
        model.iterates = [u.to(DEVICE) for u in model.iterates]  # a plain list: .to() skips it
        steps[variant] = make_step(model, variant)
        t0 = time.perf_counter()
        steps[variant](x, y)
        first[variant] = time.perf_counter() - t0
        steps[variant](x, y)
    return steps, first, x, y


def bench_config(L, W, fmt, repeats, bf16=False):
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, first, x, y = setup_config(L, W, fmt, bf16)
    times = {v: [] for v in steps}
    for r in range(repeats):
        for v in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            steps[v](x, y)
            times[v].append(time.perf_counter() - t0)
    out = step_statistics(times, first)
    if DEVICE == "cuda":
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20  # all variants of this config
    return out


def serve(inp=sys.stdin, out=sys.stdout):
    """Answer one JSON request per line, so a caller can alternate these steps with its own:

    {"op": "setup", "config": "L6W64", "formats": ["nchw", ...], "bf16": false}
        builds and warms the config's steps (dropping the previous config's) and answers
        {"steps": ["nchw/plain", ...], "first_step_s": {...}, "torch": version, "threads": n};
    {"op": "step", "step": "nchw/gloro"} runs one step and answers {"wall": s, "cpu": s}
        (this process's wall and CPU time of the step alone);
    {"op": "quit"} ends. An error answers {"error": message}.
    """
    steps, data = {}, {}
    for line in inp:
        req = json.loads(line)
        try:
            if req["op"] == "quit":
                break
            if req["op"] == "setup":
                steps.clear()
                data.clear()
                L, W = (int(v) for v in req["config"].upper().lstrip("L").split("W"))
                first = {}
                for fmt in req["formats"]:
                    fs, f1, x, y = setup_config(L, W, fmt, req.get("bf16", False))
                    for v, fn in fs.items():
                        steps[f"{fmt}/{v}"], first[f"{fmt}/{v}"], data[f"{fmt}/{v}"] = fn, f1[v], (x, y)
                reply = {"steps": list(steps), "first_step_s": first, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "device": DEVICE}
            elif req["op"] == "step":
                c, t0 = time.process_time(), time.perf_counter()
                steps[req["step"]](*data[req["step"]])
                reply = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c}
            else:
                reply = {"error": f"unknown op {req['op']!r}"}
        except Exception as e:  # answer, so the caller reports it instead of hanging
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="L6W64,L6W128,L12W128")
    ap.add_argument("--formats", default="nchw,channels_last", help="memory formats to time")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--bf16", action="store_true", help="also time both steps with bfloat16 autocast")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (loss.item() syncs)")
    ap.add_argument("--serve", action="store_true",
                    help="answer JSON requests on stdin instead (see `serve`; bench/training.py uses it to "
                         "alternate these steps with its own)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.serve:
        return serve()
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": DEVICE, "configs": {}}
    if DEVICE == "cuda":  # float32 convolutions / matmuls in TF32 or not (PyTorch's defaults: yes / no)
        res.update(gpu=torch.cuda.get_device_name(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    for cfg in args.configs.split(","):
        L, W = (int(v) for v in cfg.upper().lstrip("L").split("W"))
        res["configs"][cfg] = {fmt: bench_config(L, W, fmt, args.repeats, bf16=args.bf16)
                               for fmt in args.formats.split(",")}
        print(f"{cfg}: " + ", ".join(f"{fmt} " + " / ".join(f"{v} {r[v]['images_per_s']:.0f}" for v in r
                                                            if isinstance(r[v], dict)) + " img/s"
                                     for fmt, r in res["configs"][cfg].items()), file=sys.stderr, flush=True)
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
