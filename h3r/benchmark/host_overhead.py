"""Host overhead: the CPU time to *issue* one op call on inputs so small that the compute is negligible.

What is timed (``--host-overhead``), per call, over many back-to-back calls:

* ``heatmap_loss`` forward + backward, ``decode`` forward (top-9 softmax) through the public
  ``h3r_kernels`` functions (checks, the eager fast path of :mod:`h3r_kernels.eager`, autograd,
  backend selection, the backend's body), once with ``backend="auto"`` and once per available
  kernel backend; and once more with ``backend="auto"`` inside ``eager.fast_path(False)``: the
  registered ``torch.ops.h3r`` op, the path of ``torch.compile`` and tensor subclasses (and of
  every call before the fast path existed), i.e. the before/after of the fast path in one run;
* the same backend functions called directly (``h3r_kernels.<backend>``: no checks, no
  ``torch.library``, no autograd): what the op layer costs is the difference;
* the floor: plain PyTorch ``F.binary_cross_entropy_with_logits`` forward + backward against
  a precomputed target, in the same run.

Each figure is the median over ``rounds`` interleaved rounds (every call's round r, then
round r + 1) of (``time.process_time`` delta / ``calls``), the
CPU time of this process per call (on CUDA, the GPU work of these tiny calls takes a few
microseconds and is queued behind the host); the wall time per call is given beside it.

Where the time goes: ``cProfile`` over the same calls, the self time of every function
grouped into the categories of :data:`CATEGORIES` by the file that defines it. cProfile slows
Python functions more than C ones, so the shares are indicative; ``ms_estimate`` scales them
to the measured CPU time per call. ``torch.profiler``'s table (self CPU time per op and
call, the ``h3r::`` ops included, whose self time holds the Python run inside their body)
is kept beside it.
"""
from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

import h3r_kernels
from h3r_kernels import eager
from h3r_kernels.backends import _module, interpreting

from .cases import SEED, TOPK
from .timing import synchronize, time_per_call

DEFAULT_SHAPE = (2, 4, 8, 8)
# The impl of the rows that call the public function with the fast path off (the registered op).
REGISTERED = "auto, registered op (fast_path off)"

# (category, predicate on the file path of a profiled function); the first match wins.
CATEGORIES = (
    ("input checks (h3r_kernels/checks.py)", lambda f: f.endswith("h3r_kernels/checks.py")),
    ("backend selection (h3r_kernels/backends.py)", lambda f: f.endswith("h3r_kernels/backends.py")),
    ("counter-based RNG, Python (h3r_kernels/rng.py)", lambda f: f.endswith("h3r_kernels/rng.py")),
    ("op layer (h3r_kernels/api.py, eager.py, ops.py, dispatch.py)",
     lambda f: f.endswith(tuple(f"h3r_kernels/{name}.py" for name in ("api", "eager", "ops", "dispatch")))),
    ("backend body, Python (reference.py, triton/, cuda/)",
     lambda f: "h3r_kernels/" in f and f.endswith((".py",))),
    ("torch.library dispatch (torch/_library, torch/_ops.py)",
     lambda f: "torch/_library/" in f or f.endswith(("torch/_ops.py", "torch/library.py"))),
    ("autograd plumbing (torch/autograd, Tensor.backward)",
     lambda f: "torch/autograd/" in f or f.endswith("torch/_tensor.py")),
    ("triton launcher (triton/)", lambda f: "/triton/" in f and "h3r_kernels" not in f),
    ("cupy launcher (cupy/)", lambda f: "/cupy/" in f or "cupy_backends" in f),
    ("other torch Python", lambda f: "/torch/" in f),
    ("C++ calls (aten ops, dispatcher, autograd engine, launches)", lambda f: f == "~"),
)
OTHER = "other Python (the benchmark loop, importlib, ...)"


def _calls(shape: Sequence[int], device: torch.device) -> dict[tuple[str, str], Callable[[], object]]:
    """``(call, impl) -> fn`` for every call of the section."""
    batch, num, height, width = shape
    generator = torch.Generator(device=device).manual_seed(0)
    limits = torch.tensor([width - 1, height - 1], dtype=torch.float32, device=device)
    keypoints = torch.rand(batch, num, 2, generator=generator, device=device) * limits
    logits = torch.randn(tuple(shape), generator=generator, device=device).requires_grad_()
    maps = torch.randn(tuple(shape), generator=generator, device=device)
    target = h3r_kernels.encode(keypoints, (height, width), seed=SEED, backend="reference")

    def loss_step(backend: str):
        def step():
            logits.grad = None
            h3r_kernels.heatmap_loss(logits, keypoints, seed=SEED, backend=backend).backward()
        return step

    def loss_direct(backend: str):
        module = _module(backend, "heatmap_loss")
        plain = logits.detach()
        points = keypoints.contiguous()

        def step():
            value, grad = module.heatmap_loss(plain, points, None, 0.0, "random", SEED, "bce", "mean", True, None)
            return _backward(module, grad, torch.ones((), device=device))
        return step

    def loss_op(backend: str):
        def step():
            logits.grad = None
            value, _ = torch.ops.h3r.heatmap_loss(logits, keypoints, None, 0.0, "random", SEED, "bce", "mean", True,
                                                  backend, None)
            value.backward()
        return step

    def loss_function(backend: str):
        module = _module(backend, "heatmap_loss")

        class Loss(torch.autograd.Function):
            @staticmethod
            def forward(ctx, scores, points):
                value, grad = module.heatmap_loss(scores, points, None, 0.0, "random", SEED, "bce", "mean", True, None)
                ctx.save_for_backward(grad)
                return value

            @staticmethod
            def backward(ctx, grad_value):
                (grad,) = ctx.saved_tensors
                return _backward(module, grad, grad_value), None

        def step():
            logits.grad = None
            Loss.apply(logits, keypoints).backward()
        return step

    def decode_op(backend: str):
        return lambda: torch.ops.h3r.decode(maps, "topk", TOPK, "softmax", 3, backend)

    def decode_step(backend: str):
        return lambda: h3r_kernels.decode(maps, method="topk", k=TOPK, weights="softmax", backend=backend)

    def registered(step):
        def call():
            with eager.fast_path(False):
                return step()
        return call

    def decode_direct(backend: str):
        module = _module(backend, "decode")
        return lambda: module.decode(maps, "topk", TOPK, "softmax", 3)

    def bce_step():
        logits.grad = None
        F.binary_cross_entropy_with_logits(logits, target).backward()

    backends = ["auto"]
    available = h3r_kernels.backends()
    for name in ("reference", "triton", "cuda"):
        usable = available[name]["available"] and (device.type == "cuda" or name == "reference")
        if usable and not (name == "triton" and interpreting()):
            backends.append(name)
    calls = {}
    for backend in backends:
        calls[("heatmap_loss fwd+bwd", backend)] = loss_step(backend)
    calls[("heatmap_loss fwd+bwd", REGISTERED)] = registered(loss_step("auto"))
    for backend in backends[1:]:
        calls[("heatmap_loss fwd+bwd", f"{backend}, torch.ops.h3r (no api.py)")] = loss_op(backend)
        calls[("heatmap_loss fwd+bwd", f"{backend}, autograd.Function")] = loss_function(backend)
        calls[("heatmap_loss fwd+bwd", f"{backend}, direct")] = loss_direct(backend)
    for backend in backends:
        calls[("decode fwd", backend)] = decode_step(backend)
    calls[("decode fwd", REGISTERED)] = registered(decode_step("auto"))
    for backend in backends[1:]:
        calls[("decode fwd", f"{backend}, torch.ops.h3r (no api.py)")] = decode_op(backend)
        calls[("decode fwd", f"{backend}, direct")] = decode_direct(backend)
    calls[("bce fwd+bwd", "plain PyTorch")] = bce_step

    # The pieces of the op layer, each timed alone (same inputs).
    from h3r_kernels import checks
    from h3r_kernels.backends import select

    noop_op, noop_function = _noops()
    plain = logits.detach()
    calls[("component", "checks.check_heatmap_loss + check_backend")] = lambda: (
        checks.check_heatmap_loss(logits, keypoints, None, 0.0, "random", SEED, "bce", "mean"),
        checks.check_backend("auto"))
    calls[("component", "backends.select (auto)")] = lambda: select("heatmap_loss", device, "auto", logits.dtype,
                                                                    height * width)
    calls[("component", "torch.library custom_op no-op fwd")] = lambda: noop_op(plain)

    def noop_op_step():
        logits.grad = None
        noop_op(logits).sum().backward()

    def noop_function_step():
        logits.grad = None
        noop_function.apply(logits).sum().backward()

    def sum_step():
        logits.grad = None
        logits.sum().backward()

    calls[("component", "custom_op no-op + register_autograd, fwd+bwd (+ sum)")] = noop_op_step
    calls[("component", "autograd.Function no-op fwd+bwd (+ sum)")] = noop_function_step
    calls[("component", "sum fwd+bwd (the + sum above)")] = sum_step
    return calls


_NOOPS: list = []


def _noops():
    """A no-op ``torch.library.custom_op`` with ``register_autograd``, and the same as an ``autograd.Function``:
    the fixed cost of each way of registering an op (registered once per process)."""
    if not _NOOPS:
        @torch.library.custom_op("h3r_bench::noop", mutates_args=())
        def noop(x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @noop.register_fake
        def _(x):
            return torch.empty_like(x)

        noop.register_autograd(lambda ctx, grad: grad, setup_context=lambda ctx, inputs, output: None)

        class Noop(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                return grad

        _NOOPS.extend([noop, Noop])
    return _NOOPS[0], _NOOPS[1]


def _backward(module, grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """The loss backward as the op runs it in eager mode: in place on CUDA (``scale_grad_``), a new tensor elsewhere."""
    if grad.is_cuda:
        module.scale_grad_(grad, grad_output, "mean")
        return grad
    return module.heatmap_loss_backward(grad, grad_output, "mean")


def categorise(filename: str) -> str:
    for name, matches in CATEGORIES:
        if matches(filename.replace("\\", "/")):
            return name
    return OTHER


def profile_breakdown(fn: Callable[[], object], device: torch.device, calls: int, top: int = 12) -> dict:
    """cProfile self times of ``calls`` calls: per category (share of the total) and the top functions."""
    for _ in range(5):
        fn()
    synchronize(device)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    synchronize(device)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
    totals: dict[str, float] = {}
    functions = []
    for (filename, line, name), (_, count, self_time, _, _) in stats.items():
        category = categorise(filename)
        totals[category] = totals.get(category, 0.0) + self_time
        where = name if filename == "~" else f"{_short(filename)}:{line}({name})"
        functions.append({"function": where, "calls_per_call": count / calls, "self_share": self_time,
                          "category": category})
    whole = sum(totals.values()) or 1.0
    for entry in functions:
        entry["self_share"] /= whole
    functions.sort(key=lambda entry: -entry["self_share"])
    categories = sorted(({"category": name, "share": seconds / whole} for name, seconds in totals.items()),
                        key=lambda entry: -entry["share"])
    python_calls = sum(count for (filename, _, _), (_, count, _, _, _) in stats.items() if filename != "~")
    return {"categories": categories, "top_functions": functions[:top],
            "python_function_calls_per_call": python_calls / calls,
            "profiled_ms_per_call": whole * 1e3 / calls}


def _short(filename: str) -> str:
    filename = filename.replace("\\", "/")
    for anchor in ("h3r_kernels/", "torch/", "triton/", "cupy/"):
        if anchor in filename:
            return anchor + filename.split(anchor, 1)[1]
    return filename.rsplit("/", 1)[-1]


def torch_profile(fn: Callable[[], object], device: torch.device, calls: int, top: int = 15) -> list[dict]:
    """``torch.profiler`` self CPU time per op (µs per call of ``fn``), the largest first."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    rows = [{"op": event.key, "calls_per_call": event.count / calls,
             "self_cpu_us_per_call": event.self_cpu_time_total / calls,
             "cpu_total_us_per_call": event.cpu_time_total / calls}
            for event in prof.key_averages()]
    rows.sort(key=lambda row: -row["self_cpu_us_per_call"])
    return rows[:top]


def measure_host_overhead(device: torch.device, shape: Sequence[int] = DEFAULT_SHAPE, calls: int = 200,
                          rounds: int = 5, profile_calls: Optional[int] = None, log=print) -> dict:
    """The section: rows per call and implementation, their ratio to plain BCE, the profiles of the
    ``auto`` calls and of BCE."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: intra-op threads only add wake-ups on a busy host
    try:
        return _measure(device, shape, calls, rounds, profile_calls, log, started)
    finally:
        torch.set_num_threads(threads)


def _measure(device, shape, calls, rounds, profile_calls, log, started) -> dict:
    functions = _calls(shape, device)
    rows = [{"call": call, "impl": impl, "cpu_ms": None, "wall_ms": None, "cpu_ms_min": None, "note": ""}
            for call, impl in functions]
    samples: dict[int, list[dict]] = {index: [] for index in range(len(rows))}
    # Rounds are interleaved (round r of every call, then round r + 1): a busy spell of the host
    # then slows every call alike instead of a few of them.
    for _ in range(rounds):
        for index, (row, fn) in enumerate(zip(rows, functions.values())):
            if row["note"]:
                continue
            try:
                samples[index].append(time_per_call(fn, device, calls, 1))
            except Exception as error:  # noqa: BLE001 - recorded, the section goes on
                text = str(error).strip()
                row["note"] = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]
    for index, row in enumerate(rows):
        if samples[index] and not row["note"]:
            row["cpu_ms"] = statistics.median(sample["cpu_ms"] for sample in samples[index])
            row["wall_ms"] = statistics.median(sample["wall_ms"] for sample in samples[index])
            row["cpu_ms_min"] = min(sample["cpu_ms"] for sample in samples[index])
        shown = "—" if row["cpu_ms"] is None else f"{row['cpu_ms']:.4f}"
        log(f"host overhead: {row['call']:22s} {row['impl']:40s} {shown} ms CPU/call {row['note']}")
    bce = next(row["cpu_ms"] for row in rows if row["call"].startswith("bce"))
    for row in rows:
        row["x_bce"] = row["cpu_ms"] / bce if row["cpu_ms"] and bce else None
    by_key = {(row["call"], row["impl"]): row for row in rows}
    profiles = {}
    profile_calls = profile_calls or max(20, calls // 2)
    for key in (("heatmap_loss fwd+bwd", "auto"), ("heatmap_loss fwd+bwd", REGISTERED), ("decode fwd", "auto"),
                ("bce fwd+bwd", "plain PyTorch")):
        if by_key[key]["cpu_ms"] is None:
            continue
        breakdown = profile_breakdown(functions[key], device, profile_calls)
        for entry in breakdown["categories"]:
            entry["ms_estimate"] = entry["share"] * by_key[key]["cpu_ms"]
        breakdown["torch_profiler"] = torch_profile(functions[key], device, profile_calls)
        profiles[f"{key[0]} ({key[1]})"] = breakdown
    return {"device": device.type, "shape": list(shape), "calls": calls, "rounds": rounds, "threads": 1,
            "profile_calls": profile_calls, "rows": rows, "profiles": profiles,
            "elapsed_s": time.perf_counter() - started}


def fmt_ms(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


def markdown_section(section: dict) -> str:
    """The ``## Host overhead`` section of report.md."""
    shape = "×".join(map(str, section["shape"]))
    lines = [
        "## Host overhead",
        "",
        f"CPU time to issue one call on B×K×H×W = {shape} ({section['device']}): `time.process_time` over "
        f"{section['calls']} back-to-back calls, median (and minimum) of {section['rounds']} interleaved rounds, "
        f"1 intra-op thread. `{REGISTERED}` calls the public function with the eager fast path off, "
        "through the registered torch.library op (the path of torch.compile, and of every call before the fast "
        "path). `direct` calls "
        "the backend's functions without the op layer (checks, torch.library, autograd); `component` rows time "
        "pieces of the op layer alone. × BCE = CPU time / that of plain "
        "`F.binary_cross_entropy_with_logits` forward+backward in the same run.",
        "",
        "| call | impl | CPU ms/call | min | wall ms/call | × BCE | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        ratio = "—" if row["x_bce"] is None else f"{row['x_bce']:.1f}×"
        lines.append(f"| {row['call']} | {row['impl']} | {fmt_ms(row['cpu_ms'])} | {fmt_ms(row['cpu_ms_min'])} | "
                     f"{fmt_ms(row['wall_ms'])} | "
                     f"{ratio} | {row['note'].replace('|', '/')} |")
    for name, profile in section["profiles"].items():
        lines += ["", f"### Where the time goes: {name}", "",
                  f"cProfile over {section['profile_calls']} calls ({profile['python_function_calls_per_call']:.0f} "
                  f"Python function calls per call); self time by category, scaled to the measured CPU time.", "",
                  "| category | share | ≈ ms/call |", "|---|---|---|"]
        lines += [f"| {entry['category']} | {100 * entry['share']:.1f}% | {entry['ms_estimate']:.4f} |"
                  for entry in profile["categories"]]
        lines += ["", "| function (self time) | calls/call | share |", "|---|---|---|"]
        lines += [f"| `{entry['function']}` | {entry['calls_per_call']:.1f} | {100 * entry['self_share']:.1f}% |"
                  for entry in profile["top_functions"]]
        lines += ["", "| torch.profiler op | calls/call | self CPU µs/call | total CPU µs/call |", "|---|---|---|---|"]
        lines += [f"| `{row['op']}` | {row['calls_per_call']:.1f} | {row['self_cpu_us_per_call']:.1f} | "
                  f"{row['cpu_total_us_per_call']:.1f} |" for row in profile["torch_profiler"]]
    return "\n".join(lines) + "\n"
