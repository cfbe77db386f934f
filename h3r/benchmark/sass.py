"""A static profile of the Triton kernels, made without a GPU: ``python -m h3r.benchmark.sass``.

Each op's launcher runs on CPU tensors of a benchmark shape while Triton is told it drives a
CUDA device of the asked compute capability (``--capability``, default 90: H100/H200) and
compiles instead of launching: the kernels are those a GPU run of that shape would compile (same
constexprs, tiles, warps and argument specialisations). The compiled cubin is then read with
the ``cuobjdump`` shipped with Triton:

* ``-res-usage``: registers per thread and shared memory per block, hence the **occupancy**
  (resident warps per SM, from the SM's 65,536 registers, 64 warps and 228 KiB of shared memory);
* ``-sass``: the instructions, counted per class (FP32, MUFU special functions, integer,
  conversions, memory, control, other). For a kernel without loops (no backward branch) every
  thread runs each instruction once, so the count divided by the elements a thread handles is
  the number of instructions per map element. A kernel with runtime loops (decode) gets a
  *dynamic* count instead: its launcher says how many times each loop runs for the shape
  (``h3r_kernels.triton.decode.loop_trips``), and each loop body (from the backward branch's
  target to the branch) counts that many times (:func:`dynamic_counts`). Its loops must then
  be as many disjoint loops in the SASS as the launcher lists (the compiler neither unrolled nor
  split one), else no per-element figure is given.

The budget beside it: at the device's copy bandwidth an op moving ``bytes_per_element`` can
afford ``issue rate / (bandwidth / bytes_per_element)`` thread-instructions per element before
instruction issue, not memory, limits it (and the same for MUFU).

It needs ``TRITON_INTERPRET`` unset (interpreted kernels are not compiled) and runs in a few
seconds per kernel. Nothing here is a timing: it says why a kernel can or cannot reach the
copy bandwidth, not how fast it is.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .cases import CUDA_SHAPES, shape_text
from .tiles import parse_tiles, tile_in_use, tile_name, triton_tile

# Per-SM limits of compute capability 9.0 (CUDA C Programming Guide, "Compute capabilities").
SM_REGISTERS = 65536
SM_MAX_WARPS = 64
SM_MAX_BLOCKS = 32
SM_SHARED_BYTES = 228 * 1024
REGISTER_GRANULE = 256  # registers are allocated per warp in units of 256
# The NVIDIA H200 of bench/RESULTS.md: SMs, boost clock, measured copy bandwidth.
H200 = {"sms": 132, "clock_ghz": 1.98, "copy_gbps": 4222.7}
ISSUE_PER_SM_CLOCK = 4 * 32  # 4 schedulers, one warp-instruction each per clock
MUFU_PER_SM_CLOCK = 16

CLASSES = (
    ("MUFU", re.compile(r"^MUFU")),
    ("FP32", re.compile(r"^(FADD|FMUL|FFMA|FMNMX|FSETP|FSEL|FSET|FCHK|FRND|FSWZADD|HADD2|HMUL2|HFMA2|HSETP2|HMNMX2)")),
    ("FP64", re.compile(r"^D(ADD|MUL|FMA|SETP|MNMX)")),
    ("conversion", re.compile(r"^(F2F|F2I|I2F|I2I|F2FP|I2FP|F2IP)")),
    ("memory", re.compile(r"^(LDG|STG|LDS|STS|LDSM|LD|ST|ATOM|ATOMG|ATOMS|RED|LDGSTS|LDGDEPBAR|UBLKCP)")),
    ("control", re.compile(r"^(BRA|EXIT|BAR|BSYNC|BSSY|CALL|RET|WARPSYNC|NOP|YIELD|DEPBAR|MEMBAR|BPT|JMP|ERRBAR)")),
    ("integer", re.compile(r"^(IADD|IMAD|IMUL|LOP|SHF|SHL|SHR|ISETP|LEA|IMNMX|SEL|PRMT|POPC|FLO|IABS|BMSK|BREV|"
                           r"VIADD|VIMNMX|IDP|PLOP3|P2R|R2P|ISCADD|LOP3)")),
)
OTHER = "other (moves, shuffles, uniform datapath, special registers)"
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def classify(opcode: str) -> str:
    for name, pattern in CLASSES:
        if pattern.match(opcode):
            return name
    return OTHER


def _listing(text: str) -> tuple[list, list]:
    """``[(address, class)]`` of the instructions and ``[(target, address)]`` of the backward branches."""
    instructions, back = [], []
    for match in SASS_LINE.finditer(text):
        address, opcode, operands = int(match.group(1), 16), match.group(2), match.group(3)
        instructions.append((address, classify(opcode.split(".")[0] if not opcode.startswith("MUFU") else opcode)))
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target is not None and int(target.group(1), 16) < address:
                back.append((int(target.group(1), 16), address))
    return instructions, back


def parse_sass(text: str) -> dict:
    """Counts per class of the instructions of a ``cuobjdump -sass`` listing, whether it loops,
    and the loops: ``[first address, backward branch address, instructions]`` in program order."""
    instructions, back = _listing(text)
    counts = Counter(cls for _, cls in instructions)
    bodies = [[start, end, sum(start <= a <= end for a, _ in instructions)] for start, end in sorted(back)]
    return {"instructions": sum(counts.values()), "classes": dict(counts), "loops": bool(back), "loop_bodies": bodies}


def dynamic_counts(text: str, trips: Sequence[int]) -> Optional[dict]:
    """Instructions per class one thread runs when the listing's loops run ``trips`` times each
    (in program order), or None when its loops are not ``len(trips)`` disjoint loops.

    Each loop's body (its first instruction, the target of the backward branch, through that
    branch) counts ``trips[i]`` times, every other instruction once: exact for straight-line
    code around non-nested loops, an upper bound where forward branches skip code (both sides
    of a branch count).
    """
    instructions, back = _listing(text)
    back = sorted(back)
    if len(back) != len(trips) or any(back[i][1] >= back[i + 1][0] for i in range(len(back) - 1)):
        return None
    counts: Counter = Counter()
    for address, cls in instructions:
        inside = [n for (start, end), n in zip(back, trips) if start <= address <= end]
        counts[cls] += inside[0] if inside else 1
    return {"instructions": sum(counts.values()), "classes": dict(counts)}


def parse_resources(text: str) -> dict:
    """Registers per thread, shared memory and stack per block from ``cuobjdump -res-usage``."""
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if found is None:
        raise ValueError(f"cuobjdump -res-usage: no resource line in {text!r}")
    registers, stack, shared, local = map(int, found.groups())
    return {"registers": registers, "stack": stack, "shared_bytes": shared, "local_bytes": local}


def occupancy(registers: int, num_warps: int, shared_bytes: int) -> dict:
    """Resident blocks and warps per SM (compute capability 9.0) and what limits them."""
    per_warp = -(-registers * 32 // REGISTER_GRANULE) * REGISTER_GRANULE
    limits = {"registers": SM_REGISTERS // max(1, per_warp * num_warps), "warps": SM_MAX_WARPS // num_warps,
              "blocks": SM_MAX_BLOCKS,
              "shared memory": SM_SHARED_BYTES // shared_bytes if shared_bytes else SM_MAX_BLOCKS}
    blocks = min(limits.values())
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps,
            "occupancy": blocks * num_warps / SM_MAX_WARPS, "limited_by": min(limits, key=limits.get)}


def budget(bytes_per_element: float, device: dict = H200) -> dict:
    """Thread-instructions (all, MUFU) per element that the device issues while copying at its bandwidth."""
    elements_per_s = device["copy_gbps"] * 1e9 / bytes_per_element
    issue = device["sms"] * ISSUE_PER_SM_CLOCK * device["clock_ghz"] * 1e9
    mufu = device["sms"] * MUFU_PER_SM_CLOCK * device["clock_ghz"] * 1e9
    return {"instructions_per_element": issue / elements_per_s, "mufu_per_element": mufu / elements_per_s}


# --------------------------------------------------------------------------- compiling without a GPU


class _CompileOnlyDriver:
    """What Triton's JIT asks of its driver to compile for ``target`` (nothing is launched)."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def compile_only(capability: int):
    """Within the block, ``kernel[grid](...)`` compiles for ``sm_<capability>`` and records
    ``(kernel name, CompiledKernel, grid, num_warps, keyword arguments)`` in the yielded list instead of launching."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    compiled: list = []
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel, tuple(grid), kwargs.get("num_warps", 4), kwargs))
        return kernel

    previous = driver._active  # None until a driver was needed; reset_active() would make one (no GPU: fails)
    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", capability, 32)))
    JITFunction.run = run
    try:
        yield compiled
    finally:
        JITFunction.run = original
        driver.set_active(previous)


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: triton's cuobjdump is missing (it ships with triton's NVIDIA backend)")
    return str(path)


def cuobjdump(cubin: bytes, option: str) -> str:
    """What ``cuobjdump <option>`` (``-sass``, ``-res-usage``) prints for a compiled kernel."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([_cuobjdump(), option, str(path)], capture_output=True, text=True, check=True).stdout


def inspect_cubin(cubin: bytes, trips: Optional[Sequence[int]] = None) -> dict:
    """Resources and instruction classes of one compiled kernel; with the ``trips`` of its
    loops, also ``dynamic``: the instructions one thread runs (:func:`dynamic_counts`)."""
    sass = cuobjdump(cubin, "-sass")
    facts = {**parse_resources(cuobjdump(cubin, "-res-usage")), **parse_sass(sass)}
    facts["dynamic"] = None if trips is None else dynamic_counts(sass, trips)
    return facts


# --------------------------------------------------------------------------- the ops


def _launch(op: str, shape: Sequence[int], dtype: torch.dtype) -> Callable[[], object]:
    """The Triton launcher call of ``op`` on CPU tensors (only compiled under :func:`compile_only`)."""
    from h3r_kernels.triton import decode, encode, loss

    batch, num, height, width = shape
    keypoints = torch.rand(batch, num, 2) * torch.tensor([width - 1.0, height - 1.0])
    if op == "encode":
        return lambda: encode.encode(keypoints, None, height, width, 0.0, "random", 1, False, dtype)
    if op == "heatmap_loss":
        logits = torch.zeros(shape, dtype=dtype)

        def loss_call():
            _, grad = loss.heatmap_loss(logits, keypoints, None, 0.0, "random", 1, "bce", "mean", True)
            loss.scale_grad_(grad, torch.ones(()), "mean")
        return loss_call
    if op == "decode":
        maps = torch.zeros(shape, dtype=dtype)
        return lambda: decode.decode(maps, "topk", 9, "softmax", 3)
    raise ValueError(f"op: expected encode, heatmap_loss or decode, got {op!r}")


def _loop_trips(name: str, arguments: dict) -> Optional[tuple[int, ...]]:
    """The iterations of the runtime loops of kernel ``name`` launched with keyword ``arguments``
    (kernels whose launchers know them), else None."""
    if name == "_decode_kernel":
        from h3r_kernels.triton import decode

        return decode.loop_trips(arguments)
    return None


# The kernels that walk the maps (the loss's _cells_kernel reads the keypoints only).
MAP_KERNELS = ("_encode_kernel", "_loss_kernel", "_scale_grad_kernel", "_decode_kernel", "_decode_backward_kernel")
# Bytes per element the benchmark counts for each op (one write; a read and a write; one read).
BYTES_PER_ELEMENT_PASSES = {"encode": 1, "heatmap_loss": 2, "decode": 1}


def profile_op(op: str, shape: Sequence[int], dtype: torch.dtype, capability: int = 90) -> list[dict]:
    """One row per kernel the op's launcher compiles for ``shape`` and ``dtype``."""
    with compile_only(capability) as compiled:
        _launch(op, shape, dtype)()
    elements = math.prod(shape)
    bytes_per_element = BYTES_PER_ELEMENT_PASSES[op] * torch.empty((), dtype=dtype).element_size()
    rows = []
    for name, kernel, grid, num_warps, arguments in compiled:
        trips = _loop_trips(name, arguments)
        facts = inspect_cubin(kernel.asm["cubin"], trips)
        threads = grid[0] * (grid[1] if len(grid) > 1 else 1) * num_warps * 32
        per_thread = elements / threads
        row = {"op": op, "kernel": name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
               "grid": list(grid), "num_warps": num_warps, "elements_per_thread": per_thread, **facts,
               **occupancy(facts["registers"], num_warps, facts["shared_bytes"])}
        # Per element only for kernels that walk the maps, and run straight through or loop
        # as many times as their launcher says (the dynamic count).
        counted = facts if not facts["loops"] else facts["dynamic"]
        streams = name in MAP_KERNELS and counted is not None
        row["loop_trips"] = None if trips is None else list(trips)
        row["per_element"] = ({cls: count / per_thread for cls, count in counted["classes"].items()} | {
            "all": counted["instructions"] / per_thread}) if streams else None
        row["budget"] = budget(bytes_per_element) if streams else None
        rows.append(row)
    return rows


CSRC_KERNELS = {"loss.cu": "loss_kernel", "encode.cu": "encode_kernel", "decode.cu": "decode_kernel"}
STORAGE_NAMES = {"f": "float32", "d": "float64", "N3h3r4HalfE": "float16", "N3h3r8BFloat16E": "bfloat16"}


def profile_csrc(capability: int = 90, nvcc: Optional[str] = None) -> list[dict]:
    """Registers and occupancy of the CUDA C kernels (``csrc/``) compiled by ``nvcc`` for ``sm_<capability>``
    with the loader's defines, at the launchers' block of :data:`h3r_kernels.spec.BLOCK` threads."""
    import shutil

    from h3r_kernels import spec
    from h3r_kernels.cuda import _module

    nvcc = nvcc or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.access(nvcc, os.X_OK):
        raise FileNotFoundError(f"{nvcc}: nvcc is needed to compile csrc/ (the CUDA toolkit)")
    source_dir = _module.find_source_dir()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for source, kernel in CSRC_KERNELS.items():
            cubin = Path(folder) / f"{source}.cubin"
            subprocess.run([nvcc, "-cubin", "-std=c++17", f"-arch=sm_{capability}", "-DH3R_EXPLICIT_INSTANTIATION",
                            *spec.c_define_options(), f"-I{source_dir}", str(source_dir / source), "-o", str(cubin)],
                           capture_output=True, text=True, check=True)
            usage = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True,
                                   check=True).stdout
            for mangled, registers, shared in re.findall(r"Function (\S+):\s+REG:(\d+)\s+STACK:\d+\s+SHARED:(\d+)", usage):
                found = re.match(rf"_Z\d+{kernel}I(.+?)EvP", mangled)
                if found is None or found.group(1) not in STORAGE_NAMES:
                    continue
                warps = spec.BLOCK // 32
                rows.append({"source": source, "kernel": kernel, "dtype": STORAGE_NAMES[found.group(1)],
                             "registers": int(registers), "shared_bytes": int(shared), "num_warps": warps,
                             **occupancy(int(registers), warps, int(shared))})
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# Static profile of the Triton kernels",
        "",
        f"Compiled for sm_{report['capability']} without a GPU (`python -m h3r.benchmark.sass`), commit "
        f"{report['commit']}, triton {report['triton']}, torch {report['torch']}; {report['elapsed_s']:.0f} s. "
        "Occupancy from registers, warps and shared memory per block (compute capability 9.0 limits). "
        "Per element: SASS instructions one thread runs / elements per thread: the static count for kernels "
        "without loops; for kernels whose launcher gives their loops' trip counts (decode), each loop body "
        "times its trips (\"dynamic\"; both sides of forward branches count: an upper bound). Budget: "
        f"thread-instructions per element the H200 issues ({H200['sms']} SMs × 128 per clock × "
        f"{H200['clock_ghz']} GHz) while moving the op's bytes at its copy bandwidth ({H200['copy_gbps']} GB/s); "
        "MUFU likewise at 16 per SM and clock.",
        "",
        "| op | shape | dtype | kernel | tile (elements/per thread) | warps | regs | warps/SM (limit) | SASS | per element: all (FP32, MUFU, int, memory) | budget: all (MUFU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        per = row["per_element"]
        shown = "— (loops)" if row["loops"] else "—"
        if per is not None:
            shown = (f"{per['all']:.1f} ({per.get('FP32', 0):.1f}, {per.get('MUFU', 0):.1f}, "
                     f"{per.get('integer', 0):.1f}, {per.get('memory', 0):.2f})")
            if row["loops"]:
                shown += f" dynamic, loops × {','.join(map(str, row['loop_trips']))}"
        spent = "—" if row["budget"] is None else (f"{row['budget']['instructions_per_element']:.0f} "
                                                   f"({row['budget']['mufu_per_element']:.1f})")
        tile = row.get("tile")
        tile = "—" if tile is None else f"{tile['elements']}/{tile['per_thread']}{'' if tile['in_use'] else ' (candidate)'}"
        lines.append(f"| {row['op']} | {'×'.join(map(str, row['shape']))} | {row['dtype']} | `{row['kernel']}` | "
                     f"{tile} | {row['num_warps']} | {row['registers']} | {row['warps_per_sm']} ({row['limited_by']}) | "
                     f"{row['instructions']} | {shown} | {spent} |")
    if report.get("csrc"):
        lines += ["", f"CUDA C kernels (`csrc/`, nvcc for sm_{report['capability']}, blocks of "
                      f"{report['csrc'][0]['num_warps'] * 32} threads; encode's dynamic shared memory not counted):", "",
                  "| source | kernel | dtype | regs | warps/SM (limit) |", "|---|---|---|---|---|"]
        lines += [f"| {row['source']} | `{row['kernel']}` | {row['dtype']} | {row['registers']} | "
                  f"{row['warps_per_sm']} ({row['limited_by']}) |" for row in report["csrc"]]
    return "\n".join(lines) + "\n"


DEFAULT_SHAPES = CUDA_SHAPES  # the GPU benchmark's


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m h3r.benchmark.sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--capability", type=int, default=90, help="compute capability to compile for (default 90)")
    parser.add_argument("--ops", default="encode,heatmap_loss,decode", help="comma-separated (default: all three)")
    parser.add_argument("--shapes", default=",".join(map(shape_text, DEFAULT_SHAPES)),
                        help="BxKxHxW,... (default: the GPU benchmark shapes)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="map dtypes (default float32,bfloat16)")
    parser.add_argument("--out", type=Path, default=Path("bench") / "out", help="folder for sass.json and sass.md")
    parser.add_argument("--tiles", metavar="ELEMENTS:PER_THREAD,...",
                        help="also profile the map-tiled kernels (encode, heatmap_loss) with these GPU tiles: "
                             "elements per program and per thread (h3r_kernels/triton/_common.py; default: only "
                             "the tile in use)")
    parser.add_argument("--csrc", action="store_true",
                        help="also compile the CUDA C kernels (csrc/) with nvcc and report their registers and occupancy")
    parser.add_argument("--commit", help="git commit to record (default: git rev-parse HEAD)")
    settings = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: interpreted kernels are not compiled; unset it")
    try:
        shapes = [tuple(int(v) for v in part.split("x")) for part in settings.shapes.split(",")]
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        parser.error(f"--shapes: expected BxKxHxW,... with positive integers, got {settings.shapes!r}")
    ops = [op.strip() for op in settings.ops.split(",")]
    for op in ops:
        if op not in BYTES_PER_ELEMENT_PASSES:
            parser.error(f"--ops: expected a subset of encode, heatmap_loss, decode, got {op!r}")
    dtypes = []
    for name in settings.dtypes.split(","):
        if name.strip() not in ("float32", "bfloat16", "float16"):
            parser.error(f"--dtypes: expected a subset of float32, bfloat16, float16, got {name!r}")
        dtypes.append(getattr(torch, name.strip()))
    try:
        candidates = parse_tiles(settings.tiles) if settings.tiles else []
    except ValueError as error:
        parser.error(f"--tiles: {error}")
    import triton

    from h3r.runtime import git_commit

    started = time.perf_counter()
    rows = []
    for op in ops:
        # decode is not map-tiled; the others: the tile in use, then the candidates
        in_use = None if op == "decode" else tile_in_use(op)
        tiles = [in_use] + [tile for tile in candidates if tile != in_use] if in_use else [None]
        for tile in tiles:
            with triton_tile(tile) if tile else contextlib.nullcontext():
                for shape in shapes:
                    for dtype in dtypes:
                        found = profile_op(op, shape, dtype, settings.capability)
                        for row in found:
                            row["tile"] = tile and {"elements": tile[0], "per_thread": tile[1], "in_use": tile == in_use}
                        rows += found
                        print(f"sass: {op} {shape_text(shape)} {dtype}" + (f" tile {tile_name(tile)}" if tile else "")
                              + ": " + ", ".join(f"{r['kernel']} {r['registers']} regs, {r['warps_per_sm']} warps/SM"
                                                 for r in found), file=sys.stderr, flush=True)
    csrc = profile_csrc(settings.capability) if settings.csrc else []
    report = {"capability": settings.capability, "commit": settings.commit or git_commit(), "triton": triton.__version__,
              "torch": torch.__version__, "device_model": H200, "rows": rows, "csrc": csrc,
              "elapsed_s": time.perf_counter() - started}
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "sass.json").write_text(json.dumps(report, indent=1) + "\n")
    page = markdown(report)
    (settings.out / "sass.md").write_text(page)
    print(page)
    return report


if __name__ == "__main__":
    main()
