"""cuDNN's flash attention against XLA's, on an NVIDIA GPU: values and gradients, causal and padded,
multi-head and grouped-query, in bfloat16. benchmarks/gpu_check.sh runs it; it exits 1 on a mismatch
and 2 where there is no GPU (the CI suite never has one, so this is not a pytest test).

  python benchmarks/gpu_check.py
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bigjax.models import attention  # noqa: E402


def compare(kv_heads: int, causal: bool) -> dict:
  q = jax.random.normal(jax.random.key(0), (4, 512, 8, 64), jnp.bfloat16)
  k, v = (jax.random.normal(jax.random.key(i), (4, 512, kv_heads, 64), jnp.bfloat16) for i in (1, 2))
  valid = jnp.arange(512)[None, :] < jnp.array([[512], [400], [300], [17]])

  def run(name):
    def loss(q, k, v):
      out = attention.attention(q, k, v, valid, causal=causal, implementation=name)
      return jnp.sum(out.astype(jnp.float32) ** 2), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return [out, *grads]

  errors = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) /
                  max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-6))
            for a, b in zip(run('cudnn'), run('xla'))]
  # bfloat16 keeps 8 bits of mantissa: agreement to a few of its ulps, relative to each array's scale.
  return {'kv_heads': kv_heads, 'causal': causal, 'relative_errors': errors, 'ok': max(errors) < 2e-2}


def main() -> int:
  if jax.default_backend() != 'gpu':
    print(f'gpu_check: no GPU (backend {jax.default_backend()})', file=sys.stderr)
    return 2
  results = [compare(kv, causal) for kv in (8, 2) for causal in (True, False)]
  for r in results:
    print(json.dumps(r), flush=True)
  return 0 if all(r['ok'] for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
