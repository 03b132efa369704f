"""CPU-only speed work, in one place. None of it changes what a model computes (beyond float
rounding); each piece applies only on the CPU backend, and the rest of bigjax reaches it through the
narrow seams named below.

heap.py: the glibc malloc setting. XLA:CPU mallocs its scratch space (over a gigabyte for an LM
  step) anew every step; glibc's defaults unmap it when it is freed, so each step page-faults it in
  again. One malloc arena, no mmap, no trimming keep it in the heap for the next step. Applies: to a
  process started by `python -m bigjax.main` whose backend will be the CPU (`keep_freed_memory_on_cpu`
  below, before jax starts its threads), and to the benchmarks, which call it before importing torch
  so both contenders share it. Never on `import bigjax`: a notebook or a data loader keeps glibc's
  defaults. BIGJAX_KEEP_HEAP=0 turns it off; no-op off glibc. `heap.restart_with_huge_pages` also puts
  the heap on transparent huge pages (glibc's malloc.hugetlb tunable, read only at process start, so
  it re-executes the command line): called only by scripts' entry points (the seq2seq benchmarks).

xla_options.py: oneDNN's matmuls (config.train.cpu_matmul='onednn'). XLA:CPU's experimental
  oneDNN fusion runs matmuls with the library under PyTorch's CPU matmuls, faster at a
  Transformer's shapes, slower for the LSTM's small recurrent ones. `jit_and_compile`, which
  bigjax/train.py compiles every train step through, compiles with it where it applies (asked for,
  the CPU backend, an x86-64 jaxlib), checks the compiled program for the kinds of oneDNN fusion
  that abort the process in this XLA, and compiles again with XLA's own matmuls if it finds one.
  Elsewhere it is a plain jit and compile. The Transformer experiments set it; everything else
  keeps XLA's matmuls.

lstm.py, lstm_cpu.cc, native.py: the C++ LSTM layer. The recurrence is thousands of tiny matmuls
  that XLA runs as a while loop of separate thunks; lstm_cpu.cc runs a whole layer's forward (and
  its backward) as one XLA FFI call, threads splitting the batch. native.py compiles it with the
  machine's g++ on first use (-march=native, cached in bigjax's cache dir by source, flags, jaxlib
  and CPU) and registers it; without a compiler it logs one warning and the scan runs. Applies:
  float32 on the CPU backend, unless the model says cpu_kernel=False. Seam: bigjax/models/lstm.py
  asks `lstm.applies(dtype)` and, if so, runs `lstm.forward` / `lstm.backward` in place of its own
  lax.scan pair (same inputs, outputs and results, tested against it).

attention.py: attention with the heads moved in front of time, so XLA:CPU runs both attention
  matmuls as batched GEMMs instead of its slower lowering of jax.nn.dot_product_attention.
  Applies: on the CPU backend. Seam: bigjax/models/attention.py's `attention(...)`, the one
  function every Transformer block calls, picks it on CPU and jax.nn.dot_product_attention (the
  reference it is tested against) elsewhere.

fused.py: the Transformer's query/key/value projection as one matmul, for the same oneDNN fusion:
  one input-gradient matmul in backward instead of three summed, which the fusion cannot run (the
  whole step would fall back to XLA's matmuls). Applies: on the CPU backend (`fuse_qkv()` below);
  elsewhere bigjax/models/transformer.py runs three matmuls, because the fused layout groups the
  query heads by key/value head, which costs extra resharding (all-to-alls, collective-permutes)
  where mesh.tensor exceeds the key/value heads. Only the computation differs: the parameters are
  the same three arrays either way, so a checkpoint restores on any backend. (SwiGLU's gate and up
  are fused in transformer.py on every backend: that layout keeps the `mlp` axis whole.)

  fused.memory_kv_projection is the same for the encoder-decoder's cross-attention: every decoder
  layer's keys and values of the encoder output in one matmul (bigjax/models/seq2seq.py, where
  `fuse_qkv()`), since all of them read the same encoder output.

argmax.py: `argmax_equals`, the accuracy's argmax(logits) == labels without XLA:CPU's slow
  variadic argmax reduction (the seq2seq task's accuracy over a 4,096-id vocabulary). Applies: on
  the CPU backend; elsewhere it is the plain argmax. Seam: bigjax/tasks/seq2seq.py calls it.

depthwise.py: the Conformer's depthwise convolution over time as kernel-size shifted multiply-adds,
  which XLA fuses, instead of XLA:CPU's slow grouped convolution (forward and backward). Applies: on
  the CPU backend; elsewhere one lax.conv. Seam: bigjax/models/conformer.py's Depthwise calls
  `depthwise.conv1d`, with nn.Conv's parameters either way.

pool.py: the mean over one axis whose gradient oneDNN's fusion cannot merge into the previous
  matmul: a ViT's global average pooling, whose gradient is otherwise the head's long matmul divided
  by the patch count, a fusion this XLA's oneDNN computes wrongly and xla_options refuses (the whole
  step then runs XLA's matmuls). Applies: on the CPU backend; elsewhere the plain mean. Seam:
  bigjax/models/vit.py's pooling calls `pool.mean`.

docs/performance.md has the measurements behind each piece, and the benchmarks that took them.
"""

import glob
import importlib.util
import os
import sys
from importlib import metadata


def will_run_on_cpu() -> bool:
  """Whether jax's default backend is (or will be) the CPU, without starting a backend: the one
  that started, where one has; else the platforms asked for (JAX_PLATFORMS or jax.config), and
  with none asked for, whether any accelerator's plugin (GPU plugins, libtpu) is installed, since
  jax then prefers it. False where it cannot tell."""
  jax = sys.modules.get('jax')
  if jax is not None:
    try:  # jax has no public way to ask whether a backend has started
      from jax._src import xla_bridge  # noqa: PLC0415
      started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # moved: read the platforms asked for, below
      started = False
    if started:
      return jax.default_backend() == 'cpu'
    platforms = jax.config.jax_platforms
  else:
    platforms = os.environ.get('JAX_PLATFORMS')
  if platforms:
    return {p.strip() for p in platforms.split(',') if p.strip()} == {'cpu'}
  if os.environ.get('PJRT_NAMES_AND_LIBRARY_PATHS') or os.environ.get('TPU_LIBRARY_PATH'):
    return False
  # libtpu without a TPU (installed to compile for a slice: --dry_run --topology) leaves the CPU.
  chips = glob.glob('/dev/accel*') + glob.glob('/dev/vfio/[0-9]*')  # where TPU VMs expose their chips
  tpu = importlib.util.find_spec('libtpu') is not None and bool(chips)
  if tpu or metadata.entry_points(group='jax_plugins'):
    return False
  try:
    return importlib.util.find_spec('jax_plugins') is None  # the namespace GPU plugins install into
  except (ImportError, ValueError):
    return False


def keep_freed_memory_on_cpu() -> bool:
  """heap.keep_freed_memory() where the backend will be the CPU; True if it applied it. Call it
  first thing in a training process, before jax or torch start threads (heap.py says why)."""
  from bigjax.cpu import heap  # noqa: PLC0415
  return will_run_on_cpu() and heap.keep_freed_memory()


def fuse_qkv() -> bool:
  """Whether the Transformer computes query, key and value in one matmul (fused.py; see above)."""
  from bigjax import sharding  # noqa: PLC0415

  return sharding.platform() == 'cpu'
