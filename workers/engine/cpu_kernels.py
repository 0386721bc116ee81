"""A CPU kernel for per-row LoRA: every row of a batch applies its own adapter's update,
read straight from the adapter bank (BGMV, as S-LoRA / Punica do on a GPU).

With torch ops alone the per-row update is two batched matmuls over factors first
gathered row by row (workers/engine/batched_lora.py). On a CPU that costs a
small-matrix call per row per module, plus the gathered copies; measured on mint-s
(`make bench-serving`) it cost more than the base itself at hidden 128. This kernel does
the same arithmetic in one pass per module: for each row, the rank-r shrink
(r dot products over the input) then the expand (r axpys over the output), adding into
the base layer's output in place. It reads each row's factors once, from the bank, with
no copy, and splits rows over torch's intra-op threads.

It is C++ compiled on first use by torch's cpp_extension (ninja and a C++ compiler; about
half a minute), for this CPU (`-march=native`), into a folder named after the CPU's
instruction-set flags and the source's hash, then loaded from there by every process.
Nothing is downloaded. Where it cannot be built the engine keeps to the torch-ops path:
`bgmv()` returns None and says why once in the log. `MINT_LORA_KERNEL=off` turns it off.

Float32 on the CPU, inference only (no autograd); anything else takes the torch-ops path.
No Django imports.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// y[b, t, :] += scale[s] * B[s, :rank, :]^T (A[s, :rank, :] x[b, t, :]) with s = slots[b]:
// x [rows, steps, in], y [rows, steps, out] (last dim contiguous); the bank's
// A [S, R, in] and B [S, R, out] (rank-major) and scale [S], all float32 and contiguous.
void bgmv_(torch::Tensor y, torch::Tensor x, torch::Tensor a, torch::Tensor b,
           torch::Tensor scale, torch::Tensor slots, int64_t rank) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3, "x and y must be [rows, steps, features]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat &&
              a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
              scale.scalar_type() == at::kFloat, "bgmv_ takes float32 tensors");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous(),
              "slots must be a contiguous int64 vector");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && scale.is_contiguous(), "the bank must be contiguous");
  TORCH_CHECK(x.stride(2) == 1 && y.stride(2) == 1, "x and y must be contiguous in their last dim");
  const int64_t rows = x.size(0), steps = x.size(1), in = x.size(2), out = y.size(2);
  const int64_t S = a.size(0), R = a.size(1);
  TORCH_CHECK(y.size(0) == rows && y.size(1) == steps && slots.size(0) == rows, "rows do not line up");
  TORCH_CHECK(a.size(2) == in && b.size(0) == S && b.size(1) == R && b.size(2) == out &&
              scale.size(0) == S, "the bank does not fit this layer");
  TORCH_CHECK(0 <= rank && rank <= R && R <= 256, "rank out of range");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK(0 <= slot[r] && slot[r] < S, "slot out of range");

  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const float* A = a.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  const float* scales = scale.data_ptr<float>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), ys0 = y.stride(0), ys1 = y.stride(1);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    float xa[256];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = slot[r];
      const float sc = scales[s];
      if (sc == 0.0f) continue;  // the bare base's slot, or a module this adapter leaves alone
      const float* As = A + s * R * in;
      const float* Bs = B + s * R * out;
      for (int64_t t = 0; t < steps; ++t) {
        const float* xr = X + r * xs0 + t * xs1;
        float* yr = Y + r * ys0 + t * ys1;
        for (int64_t k = 0; k < rank; ++k) {
          const float* ak = As + k * in;
          float acc = 0.0f;
          #pragma omp simd reduction(+:acc)
          for (int64_t i = 0; i < in; ++i) acc += ak[i] * xr[i];
          xa[k] = acc * sc;
        }
        for (int64_t k = 0; k < rank; ++k) {
          const float* bk = Bs + k * out;
          const float v = xa[k];
          #pragma omp simd
          for (int64_t o = 0; o < out; ++o) yr[o] += v * bk[o];
        }
      }
    }
  });
}

// The kernel touches no Python object: other threads (a serving worker's HTTP side) run
// while it does, as they do during torch's own ops.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bgmv_", &bgmv_, "y += each row's LoRA update, in place",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
"""

_lock = threading.Lock()
_loaded: dict[str, Callable | None] = {}


def bgmv() -> Callable | None:
    """`bgmv_(y, x, a, b, scale, slots, rank)`, built or loaded once per process, or None
    where it is turned off or cannot be built."""
    if os.environ.get("MINT_LORA_KERNEL", "auto").lower() in ("off", "0", "false", "no"):
        return None
    with _lock:
        if "bgmv" not in _loaded:
            _loaded["bgmv"] = _build()
        return _loaded["bgmv"]


def build_folder() -> Path:
    """Where the kernel is built: MINT_KERNEL_DIR, else var/build/kernels/ (beside the
    store, so every process of one deployment shares one build), one folder per CPU kind."""
    root = os.environ.get("MINT_KERNEL_DIR")
    if root is None:
        var = os.environ.get("MINT_VAR_DIR") or Path(__file__).resolve().parents[2] / "var"
        root = Path(var) / "build" / "kernels"
    return Path(root) / _cpu_tag()


def _cpu_tag() -> str:
    """Built with -march=native: a build is only good on a CPU with the same instruction sets."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{os.uname().machine} {flags}".encode()).hexdigest()[:12]


def _build() -> Callable | None:
    import torch
    from torch.utils import cpp_extension

    folder = build_folder()
    name = "mint_bgmv_" + hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    # torch looks for ninja on PATH; a virtualenv's own ninja sits beside its python.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        module = cpp_extension.load_inline(
            name,
            cpp_sources=SOURCE,
            extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a read-only folder: serve without it
        log.warning("the CPU LoRA kernel could not be built (%s); serving with torch ops", exc)
        return None
    log.debug("CPU LoRA kernel ready (%s, torch %s)", folder, torch.__version__)
    return module.bgmv_
