"""What a kernel costs a GPU before it runs: compile for sm_90 (or another architecture) on any machine and
read the cubin.

Triton ships ptxas, cuobjdump and nvdisasm, so the whole pipeline source → PTX → cubin runs without a GPU.
That answers two questions. Does the kernel build for a given architecture with this Triton
(``experiments/kernel_builds.py``: sm_75 to sm_90, every dtype, the largest shapes)? And what does it cost an
H100? From the cubin this module reads what decides a latency-bound kernel's speed and does not depend on
timing:

* registers per thread and local-memory stack (``STACK`` > 0: values spilled out of registers);
* shared memory per block (Triton's dynamic allocation plus the static part);
* resident blocks and warps per SM, by the occupancy rules of sm_90 (65 536 registers allocated per warp in
  units of 256, 64 warps, 32 blocks and 228 KiB of shared memory per SM, 1 KiB of it reserved per block);
* the SASS: instructions in all, local loads/stores (spill traffic), barriers and warp shuffles, and which
  tensor-core instructions the dots became: ``HGMMA`` (Hopper's warpgroup MMA, ``wgmma``, what fast attention
  kernels use on sm_90; Triton emits it only for tiles of at least 64 rows) or ``HMMA`` (the per-warp MMA of
  earlier architectures, ``mma.sync``).

None of this is a time; it says where a kernel cannot be fast (spills, one block per SM) and lets a change to
the kernel be checked on a CPU before a GPU times it. ``experiments/kernel_resources.py`` tabulates it for the
fused kernel at the benchmark's shapes; ``tests/test_kernels_compile.py`` uses :func:`compile_for_gpu`.

Compiling must not happen under ``TRITON_INTERPRET=1`` (the kernels are then interpreter objects); run in a
process that imported the kernels without it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

# sm_90 (H100/H200) per-SM limits, from the CUDA occupancy calculator's table for compute capability 9.0.
SM90_REGISTERS = 65536
SM90_REGISTER_UNIT = 256          # registers are allocated per warp in units of 256
SM90_MAX_WARPS = 64
SM90_MAX_BLOCKS = 32
SM90_SHARED_BYTES = 228 * 1024
SM90_SHARED_RESERVED = 1024       # per block, taken by the runtime
SM90_MAX_SHARED_PER_BLOCK = 227 * 1024

# The architectures the kernels are built for offline: GPUs of each, and the most shared memory one block may
# use there (opt-in limit; CUDA C Programming Guide, technical specifications per compute capability).
ARCHITECTURES = {
    75: ("T4, RTX 20xx", 64 * 1024),
    80: ("A100, A30", 163 * 1024),
    86: ("RTX 30xx, A10, A40", 99 * 1024),
    89: ("RTX 40xx, L4, L40S", 99 * 1024),
    90: ("H100, H200", SM90_MAX_SHARED_PER_BLOCK),
}


class OfflineCompileError(RuntimeError):
    """The kernels cannot be compiled offline here (interpreter active, or Triton's NVIDIA tools missing)."""


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise OfflineCompileError(f"{name} not found at {path}: this Triton build ships no NVIDIA tools")
    return path


def ptxas_version(arch: int = 90) -> str:
    """The version line of the ptxas Triton uses for ``arch`` here (register allocation depends on it: a GPU
    machine with another Triton may allocate differently)."""
    from triton.backends.nvidia.compiler import get_ptxas

    out = subprocess.run([get_ptxas(arch).path, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-2] if len(out.strip().splitlines()) > 1 else out.strip()


def compile_for_gpu(fn, types: dict[str, str], consts: dict, num_warps: int, *, arch: int = 90,
                    num_stages: int = 1, maxnreg: int | None = None, attrs: dict | None = None):
    """``fn`` (a ``@triton.jit`` kernel) compiled for compute capability ``arch`` (90: H100/H200): ``types``
    maps argument names to Triton types (others default to ``i32``), ``consts`` gives the constexprs,
    ``maxnreg`` caps registers per thread (None: ptxas decides), ``attrs`` the argument attributes (see
    :func:`launcher_specialization`: without them the compile is not the one a launch makes). Returns Triton's
    compiled kernel; a kernel Triton cannot build raises Triton's own error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if type(fn).__name__ == "InterpretedFunction":
        raise OfflineCompileError("the kernels were imported under TRITON_INTERPRET=1; compile in a fresh process "
                                  "without it")
    signature = {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    return triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


# --------------------------------------------------------------------------------------------------
# Compiling what a launch compiles: the launcher specialises on the call's arguments
# --------------------------------------------------------------------------------------------------
# Triton's launcher does not compile a kernel for its argument types alone. An integer equal to 1 becomes a
# constant, and integers divisible by 16 and 16-byte-aligned pointers are marked so (tt.divisibility). A unit
# stride is what lets the compiler see that a row is contiguous and load it in vectors. Compiled without these,
# the fused kernel at SANA's default launch (16 queries on 8 warps; softmax and α ≤ 2) took 241–254 registers
# per thread under Triton 3.6, with them 74–121 (results/kernel_resources_history/: the
# kernel_resources_e7198aa_unspecialised.csv and kernel_resources_85cb5e8.csv tables, the same kernel). So the
# offline tables compile the specialisation of a real call, captured from the launching code itself
# (:func:`captured_launches`) rather than rewritten here.

@contextlib.contextmanager
def captured_launches(module, kernel_name: str):
    """While the block runs, ``module.<kernel_name>[grid](...)`` records its arguments instead of launching:
    yields a list that receives one ``{argument name: value}`` per launch (positional and keyword arguments)."""
    fn = getattr(module, kernel_name)
    calls: list[dict] = []

    class _Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append({**dict(zip(fn.arg_names, args)), **kwargs})
            return launch

    setattr(module, kernel_name, _Recorder())
    try:
        yield calls
    finally:
        setattr(module, kernel_name, fn)


def launcher_specialization(fn, arguments: dict) -> tuple[dict, dict]:
    """``(constants, attrs)`` that Triton's launcher derives from a call's ``arguments`` (by name, as
    :func:`captured_launches` records them): integers equal to 1 become constants; integers divisible by 16
    and tensors whose data pointer is 16-byte aligned get ``tt.divisibility`` 16. Floats, booleans and the
    kernel's constexprs are left alone."""
    import torch

    constants, attrs = {}, {}
    constexprs = {name for name, param in inspect.signature(fn.fn).parameters.items()
                  if str(param.annotation).endswith("constexpr")}
    for index, name in enumerate(fn.arg_names):
        value = arguments.get(name)
        if name in constexprs or value is None or isinstance(value, (bool, float)):
            continue
        if isinstance(value, torch.Tensor):
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif value == 1:
            constants[name] = 1
        elif value % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return constants, attrs


def fused_attention_call(lk: int, d: int, heads: int, *, batch: int = 2, queries: int = 4096,
                         dtype: str = "bfloat16", return_stats: bool = False) -> dict:
    """The fused kernel's arguments for a diffusers cross-attention call: q, k, v head-split views of
    (batch, L, heads·d) tensors, as attention processors pass them, no mask (the benchmark's layout), with the
    per-row statistics when ``return_stats`` (as the probes ask). Captured from
    :func:`~.cross_attention.fused_attention_forward` on empty CPU tensors; nothing runs."""
    import torch

    from . import cross_attention

    def heads_view(length: int):                                           # (B, L, H·d) → (B, H, L, d)
        x = torch.empty(batch, length, heads * d, dtype=getattr(torch, dtype))
        return x.view(batch, length, heads, d).transpose(1, 2)

    with captured_launches(cross_attention, "_fused_pladis_fwd_kernel") as calls:
        cross_attention.fused_attention_forward(heads_view(queries), heads_view(lk), heads_view(lk),
                                                pladis_scale=2.0, alpha=1.5, return_stats=return_stats)
    return calls[0]


def rowwise_call(rows: int, n: int, dtype: str = "bfloat16", backward: bool = False) -> dict:
    """The row-wise entmax kernel's arguments for ``rows`` contiguous rows of ``n`` scores, captured from
    :func:`~.entmax_rowwise.entmax_forward` (float32 weights out, as the autograd function asks) or, with
    ``backward``, from :func:`~.entmax_rowwise.entmax_backward` (float32 weights and gradients)."""
    import torch

    from . import entmax_rowwise

    if backward:
        with captured_launches(entmax_rowwise, "_entmax_bwd_kernel") as calls:
            entmax_rowwise.entmax_backward(torch.empty(rows, n), torch.empty(rows, n), 1.5)
    else:
        with captured_launches(entmax_rowwise, "_entmax_fwd_kernel") as calls:
            entmax_rowwise.entmax_forward(torch.empty(rows, n, dtype=getattr(torch, dtype)), 1.5,
                                          out_dtype=torch.float32)
    return calls[0]


def experiment_main(argv: list[str] | None, description: str, run, config_class, report, default_out):
    """The command line of the offline-compile experiments (``experiments/kernel_resources.py``,
    ``kernel_builds.py``): ``--quick`` runs ``config_class.quick()``, ``--out`` names the results folder; prints
    ``report(path)`` and returns the table's path."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small grid for tests")
    parser.add_argument("--out", type=Path, default=default_out, help="folder for the results table")
    args = parser.parse_args(argv)
    # Compiling needs the real kernels, not the interpreter's objects (decided when they are first imported).
    os.environ["TRITON_INTERPRET"] = "0"
    path = run(config_class.quick() if args.quick else config_class(), args.out)
    report(path)
    return path


_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def fused_kernel_types(dtype: str, mask_kind: int) -> dict[str, str]:
    """Argument types of the fused cross-attention kernel for inputs of ``dtype`` (``"bfloat16"`` …) and a
    mask of ``mask_kind`` (0 none, 1 boolean, 2 additive), as :func:`compile_for_gpu` takes them."""
    if dtype not in _TRITON_TYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_TRITON_TYPES)}")
    pointer = "*" + _TRITON_TYPES[dtype]
    return {"score_scale": "fp32", "alpha": "fp32", "lam": "fp32", "stop_tol": "fp32", "tsallis_alpha": "fp32",
            "Q": pointer, "K": pointer, "V": pointer, "OUT": pointer, "STATS": "*fp32",
            "MASK": "*u8" if mask_kind == 1 else pointer}


@dataclass(frozen=True)
class Resources:
    """Static resources of one compiled kernel (see the module docstring)."""

    registers: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    blocks_per_sm: int
    warps_per_sm: int
    sass_instructions: int
    local_loads: int
    local_stores: int
    barriers: int
    shuffles: int
    hgmma: int
    hmma: int
    mufu: int = 0                 # special-function instructions (exp2, log2, reciprocal, square root)
    loop_instructions: int = 0    # the largest loop's body: the fused kernel's threshold search, when it has one
    loop_mufu: int = 0            # MUFU instructions in that body

    @property
    def tensor_core_path(self) -> str:
        """``"wgmma"`` when the dots compiled to warpgroup MMA (HGMMA), ``"mma"`` for per-warp MMA (HMMA),
        ``"none"`` for neither (e.g. float32's IEEE dots, which run on the FMA units)."""
        return "wgmma" if self.hgmma else "mma" if self.hmma else "none"

    def as_dict(self) -> dict:
        return {**asdict(self), "tensor_core_path": self.tensor_core_path}


def parse_resource_usage(text: str) -> dict[str, int]:
    """``REG``, ``STACK`` and ``SHARED`` of the (single) function in ``cuobjdump -res-usage`` output."""
    found = {}
    for name in ("REG", "STACK", "SHARED"):
        match = re.search(rf"\b{name}:(\d+)", text.split("Function", 1)[-1])
        if match is None:
            raise ValueError(f"no {name} in cuobjdump -res-usage output: {text[:300]!r}")
        found[name] = int(match.group(1))
    return found


# One SASS instruction: its address, its opcode (after an optional predicate) and its operands up to the ';'.
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def count_sass(text: str) -> dict[str, int]:
    """Instruction counts in ``cuobjdump -sass`` output: all, local loads/stores, barriers, warp shuffles,
    warpgroup MMAs (``HGMMA``), per-warp MMAs (``HMMA``) and special-function instructions (``MUFU``), and the
    largest loop's body (:func:`loop_opcodes`; 0 without a loop) with its MUFU instructions."""
    opcodes = [m.group(2).split(".")[0] for m in _SASS_LINE.finditer(text)]
    loops = loop_opcodes(text)
    loop = loops[0] if loops else []
    return {"sass_instructions": len(opcodes),
            "local_loads": sum(op == "LDL" for op in opcodes),
            "local_stores": sum(op == "STL" for op in opcodes),
            "barriers": sum(op in ("BAR", "BAR_SYNC") for op in opcodes),
            "shuffles": sum(op == "SHFL" for op in opcodes),
            "hgmma": sum(op == "HGMMA" for op in opcodes),
            "hmma": sum(op == "HMMA" for op in opcodes),
            "mufu": sum(op == "MUFU" for op in opcodes),
            "loop_instructions": len(loop),
            "loop_mufu": sum(op.startswith("MUFU") for op in loop)}


def loop_opcodes(text: str) -> list[list[str]]:
    """The opcodes (``FADD``, ``MUFU.EX2``, …) of each loop in ``cuobjdump -sass`` output, one list per iteration,
    largest first. Loops are backward branches (``BRA`` to a lower address; the body runs from the target to the
    branch, both included). Every warp issues a loop's body once per iteration, predicated-off instructions
    included."""
    addresses, opcodes, branches = [], [], []
    for match in _SASS_LINE.finditer(text):
        address = int(match.group(1), 16)
        addresses.append(address)
        opcodes.append(match.group(2))
        target = re.search(r"0x([0-9a-f]+)", match.group(3)) if match.group(2).startswith("BRA") else None
        if target is not None and int(target.group(1), 16) < address:
            branches.append((int(target.group(1), 16), address))
    index = {address: i for i, address in enumerate(addresses)}
    bodies = [opcodes[index[start]:index[end] + 1] for start, end in branches if start in index]
    return sorted(bodies, key=len, reverse=True)


def loop_bodies(text: str) -> list[int]:
    """Instructions per iteration of each loop in ``cuobjdump -sass`` output, largest first (see
    :func:`loop_opcodes`)."""
    return [len(body) for body in loop_opcodes(text)]


def occupancy(registers: int, shared_bytes: int, num_warps: int) -> tuple[int, int]:
    """(blocks, warps) resident per sm_90 SM for a kernel with these per-thread registers, per-block shared
    memory and warps per block."""
    if registers <= 0 or num_warps <= 0:
        raise ValueError(f"registers={registers}, num_warps={num_warps}: both must be positive")
    per_warp = -(-registers * 32 // SM90_REGISTER_UNIT) * SM90_REGISTER_UNIT
    by_registers = (SM90_REGISTERS // per_warp) // num_warps
    by_warps = SM90_MAX_WARPS // num_warps
    by_shared = SM90_SHARED_BYTES // (shared_bytes + SM90_SHARED_RESERVED) if shared_bytes else SM90_MAX_BLOCKS
    if shared_bytes > SM90_MAX_SHARED_PER_BLOCK:
        by_shared = 0
    blocks = max(0, min(by_registers, by_warps, by_shared, SM90_MAX_BLOCKS))
    return blocks, blocks * num_warps


def _cuobjdump(compiled, flag: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        return subprocess.run([_tool("cuobjdump"), flag, cubin], capture_output=True, text=True, check=True).stdout


def usage(compiled) -> dict[str, int]:
    """``registers`` per thread, spilled ``stack_bytes`` and ``shared_bytes`` per block of a compiled kernel,
    for any architecture (Triton's dynamic shared memory plus the static part)."""
    found = parse_resource_usage(_cuobjdump(compiled, "-res-usage"))
    return {"registers": found["REG"], "stack_bytes": found["STACK"],
            "shared_bytes": int(compiled.metadata.shared) + found["SHARED"]}


def resources(compiled, num_warps: int) -> Resources:
    """Read a kernel compiled for sm_90 with cuobjdump (see :class:`Resources`)."""
    found = usage(compiled)
    blocks, warps = occupancy(found["registers"], found["shared_bytes"], num_warps)
    return Resources(**found, num_warps=num_warps, blocks_per_sm=blocks, warps_per_sm=warps,
                     **count_sass(sass(compiled)))


def sass(compiled) -> str:
    """The SASS of a compiled kernel (``cuobjdump -sass``)."""
    return _cuobjdump(compiled, "-sass")


def fused_kernel_compiler(lk: int, d: int, heads: int, *, alpha: float, need_entmax: bool = True,
                          with_stats: bool = False, dtype: str = "bfloat16", start_ranks: int | None = None):
    """``(meta, compile)`` for the fused kernel at a diffusers-layout call (``lk`` keys, head dim ``d``,
    ``heads`` heads, no mask; see :func:`fused_attention_call`): ``meta`` its compile-time arguments but the
    launch shape, ``compile(block_m, num_warps, maxnreg=None, arch=90)`` the kernel compiled as a launch of
    that shape compiles it (with the launcher's specialisation). ``start_ranks`` overrides the threshold
    search's start (``START_RANKS``; default: the kernel's for ``alpha``), to count what the start costs."""
    import torch

    from . import cross_attention as ca

    kernel = ca._fused_pladis_fwd_kernel
    specialised, attrs = launcher_specialization(
        kernel, fused_attention_call(lk, d, heads, dtype=dtype, return_stats=with_stats))
    meta = ca.kernel_constexprs(getattr(torch, dtype), lk, d, d, alpha=alpha, mask_kind=0, need_softmax=True,
                                need_entmax=need_entmax, with_stats=with_stats)
    if start_ranks is not None:
        meta["START_RANKS"] = start_ranks
    types = fused_kernel_types(dtype, mask_kind=0)

    def compile(block_m: int, num_warps: int, maxnreg: int | None = None, arch: int = 90):
        return compile_for_gpu(kernel, types, {**meta, **specialised, "BLOCK_M": block_m}, num_warps, arch=arch,
                               maxnreg=maxnreg, attrs=attrs)

    return meta, compile
