"""FLOPs: what a model step costs, what the hardware peaks at, and so the MFU.

Model FLOPs utilization = model FLOPs per step x steps/s / (peak FLOP/s x devices).
Model FLOPs count only the math the model needs (6 per parameter per token for
forward and backward, plus attention; nanoGPT and PaLM's convention), never
rematerialization, so MFU compares across remat policies. Peaks are dense bf16.
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from bigjax import files

# device_kind prefix -> dense bf16 peak FLOP/s per device (not the sparse figures).
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6 lite': 918e12,  # v6e, Trillium
    'TPU v6e': 918e12,
    'NVIDIA A100': 312e12,
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
}


def transformer_flops_per_token(model_config, num_params: int, seq_len: int) -> float:
  """6N for the weights' forward and backward, plus 12 L d T for attention scores and values.
  model_config: a mapping with num_layers and d_model (models.flops_per_example fills in the defaults)."""
  return 6 * num_params + 12 * model_config['num_layers'] * model_config['d_model'] * seq_len


def vit_flops_per_example(model_config, num_params: int, image_shape) -> float:
  """The LM's count over the image's tokens: a patch per token (and the class token), each weight once
  per token, attention over all of them. Counting the head and the position table per token overstates
  it by under 1% for the named sizes. model_config: a mapping with every field (defaults filled in)."""
  patch = model_config['patch_size']
  tokens = (image_shape[0] // patch) * (image_shape[1] // patch) + (model_config['classifier'] == 'token')
  return transformer_flops_per_token(model_config, num_params, tokens) * tokens


def seq2seq_flops_per_example(model_config, num_params: int, source_len: int, target_len: int) -> float:
  """The encoder-decoder's 6N, counting each weight once per token that passes it: encoder layers
  per source token, decoder layers and the output logits per target token (the embedding lookups
  are no FLOPs); plus 12 L d T S for self- and cross-attention scores and values. The copy head's
  small matmuls are left out. model_config: a mapping with every field (defaults filled in)."""
  d, ratio = model_config['d_model'], model_config['mlp_ratio']
  encoder_layers = model_config['num_layers']
  decoder_layers = model_config['num_decoder_layers'] or encoder_layers
  mlp = (3 if model_config['mlp'] == 'swiglu' else 2) * ratio * d * d
  encoder_layer, decoder_layer = 4 * d * d + mlp, 8 * d * d + mlp  # q, k, v, out; and cross-attention's
  tables = 3 - bool(model_config['shared_embedding']) - bool(model_config['tied_embedding'])
  output = (num_params - encoder_layers * encoder_layer - decoder_layers * decoder_layer) / tables
  weights = (source_len * encoder_layers * encoder_layer
             + target_len * (decoder_layers * decoder_layer + output))
  attention = encoder_layers * source_len**2 + decoder_layers * target_len * (target_len + source_len)
  return 6 * weights + 12 * d * attention


def lstm_flops_per_token(model_config) -> float:
  """6 x (inputs + H) x 4H per direction and layer: the input and recurrent matmuls, forward and
  backward (the gates' arithmetic and the head are small beside them). Counted here because XLA
  cannot see into the C++ layer (bigjax/cpu/lstm_cpu.cc) that runs it on CPU."""
  directions = 2 if model_config['bidirectional'] else 1
  hidden, width, total = model_config['hidden'], model_config['embed_dim'], 0
  for _ in range(model_config['num_layers']):
    total += directions * 6 * (width + hidden) * 4 * hidden
    width = directions * hidden
  return total


def _measure_cpu_matmul() -> float:
  """FLOP/s of a large float32 matmul on this CPU: the best of a few, all cores."""
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def peak_flops(override: float = 0.0) -> tuple[float, str]:
  """Peak FLOP/s of all devices together, and where the figure came from."""
  if override:
    return override * jax.device_count(), 'config'
  device = jax.devices()[0]
  if device.platform == 'cpu':  # simulated CPU devices share the same cores: one peak in all
    key = f'{platform.processor() or platform.machine()} x{os.cpu_count()} jax{jax.__version__}'
    cache = {}
    path = os.path.join(files.cache_dir(), 'cpu_peak_flops.json')
    if os.path.exists(path):
      with open(path) as f:
        cache = json.load(f)
    if key not in cache:
      cache[key] = _measure_cpu_matmul()
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with files.replaced_atomically(path) as f:
        json.dump(cache, f)
    return cache[key], 'measured float32 matmul, cached'
  for prefix, value in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(prefix):
      return value * jax.device_count(), f'{prefix} table'
  return 0.0, f'unknown device {device.device_kind!r}: set train.peak_flops'


def xla_flops(compiled, devices: int = 0) -> float:
  """XLA's FLOPs for one step on all `devices` (default: jax's; it costs the per-device program).

  XLA counts a loop body once, so with train.grad_accum > 1 this is one micro-batch's.
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older JAX: one dict per program
  return float(cost.get('flops', 0.0)) * (devices or jax.device_count())
