"""GPT-style decoder language model on the offline Python standard-library corpus.

  python -m bigjax.main --config=experiments/lm_gpt.py:tiny          # CPU, minutes
  python -m bigjax.main --config=experiments/lm_gpt.py:tiny --mode=sample --prompt="def "
  python -m bigjax.main --config=experiments/lm_gpt.py:124m --config.data.name=lm1b   # GPU/TPU

Result (2026-11-29, 2-core x86_64 CPU): :tiny reaches eval 1.652 bits/byte (gzip -9: 2.084,
xz -9: 1.787) in 8 min 35 s; on a 2-core AVX-512 Xeon with train.cpu_matmul=onednn, the same
1.652 in 3 min 27 s. Baselines and speed: docs/performance.md. :tiny_teacher (6 x 192, 3.05 M, the
same tokenizer), the teacher of experiments/ablations/distill_lm.py: eval 1.625 bits/byte.

Variants. Memory is --dry_run on 8 simulated CPU devices with --config.mesh.data=1
--config.mesh.fsdp=8 (per device; float32 compute, as on CPU; bf16 on GPU/TPU shrinks `temp`;
measured 2026-11-29 with train.cpu_matmul=onednn, which the SwiGLU variants no longer fall back
from since gate and up became one matmul):
  name   shape                                  params   params+opt_state   temp (activations)
  tiny   4 x 128, 4 heads, SentencePiece 2,048,    1.05 M      1.6 MB            42 MB
         context 128, batch 32
  small  6 x 384, 6 heads, bytes, context 256,    10.7 M      16 MB            176 MB
         batch 16 (the benchmark shape)
  124m   12 x 768, 12 heads, SentencePiece 32k,  110 M       165 MB            21.7 GB
         context 1024, batch 256 (GPT-2 small)
  350m   24 x 1024, 16 heads, context 1024       336 M       503 MB            42.8 GB
  1b     24 x 2048, 16 heads, context 2048      1.28 B       1.9 GB            162 GB: use
         train.grad_accum (or more devices) to fit 80 GB accelerators
The 124m and larger use SwiGLU, RMSNorm, z-loss, remat (dots_no_batch) and scanned layers.

What they need on TPU: the smallest v5e and v5p slices on which the train step fits with the
default mesh (fsdp over every chip), bf16 and splash attention, and its bytes per chip, from
`--dry_run --topology=SLICE` on a 2-core CPU (libtpu 0.0.42.1, requirements-tpu.txt):
  124m   v5e:4x4 (16 chips): 9.1 of 16 GiB                  v5p:2x2x1 (4 chips): 36.1 of 95 GiB
  350m   v5e:4x4 (16 chips): 14.4 of 16 GiB            v5p:2x2x1 (4 chips): 56.4 of 95 GiB
  1b     v5e:8x8 (64 chips): 11.3 of 16 GiB            v5p:2x2x2 (8 chips): 89.1 of 95 GiB
Each smaller slice of the same generation ran out of HBM (124m on v5e:2x4: 18.1 GiB).
"""

import ml_collections

from bigjax.config import base_config

VARIANTS = {
    # name: (layers, d_model, heads, context, tokenizer, batch, steps, lr)
    'tiny': (4, 128, 4, 128, 'sentencepiece', 32, 750, 3e-3),
    'tiny_teacher': (6, 192, 6, 128, 'sentencepiece', 32, 750, 2e-3),  # :tiny's distillation teacher
    'small': (6, 384, 6, 256, 'byte', 16, 5000, 1e-3),
    '124m': (12, 768, 12, 1024, 'sentencepiece', 256, 100_000, 6e-4),
    '350m': (24, 1024, 16, 1024, 'sentencepiece', 256, 100_000, 3e-4),
    '1b': (24, 2048, 16, 2048, 'sentencepiece', 256, 100_000, 2e-4),
}


def get_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  layers, d_model, heads, context, tokenizer, batch, steps, lr = VARIANTS[variant]
  big = variant not in ('tiny', 'tiny_teacher', 'small')
  c = base_config()
  c.task = ml_collections.ConfigDict({'name': 'lm', 'z_loss': 1e-4 if big else 0.0})

  c.data.name = 'python_stdlib'  # offline; lm1b and tiny_shakespeare read the same way
  c.data.tokenizer = tokenizer  # byte | sentencepiece (trained on the train split, cached)
  c.data.vocab_size = (2048 if variant.startswith('tiny') else 32768) if tokenizer == 'sentencepiece' else 0
  c.data.seq_len = context

  c.model = ml_collections.ConfigDict({
      'name': 'transformer_lm',
      'num_layers': layers,
      'd_model': d_model,
      'num_heads': heads,
      'num_kv_heads': 0,  # 0: multi-head; a divisor of num_heads: grouped-query attention
      'mlp': 'swiglu' if big else 'gelu',
      'mlp_ratio': 8 / 3 if big else 4.0,  # swiglu's three matrices cost what gelu's two do at 4x
      'norm': 'rmsnorm' if big else 'layernorm',
      'positions': 'rope',
      'tied_embedding': True,
      'dropout': 0.0,
      'attention': 'auto',  # splash on TPU, cuDNN on GPU, heads-major einsums on CPU
      'attention_block': 512,  # splash's query and key blocks
      'dtype': 'auto',  # bfloat16 on TPU and GPU, float32 on CPU; params stay float32
      'scan_layers': big,  # scanning saves compile time at depth; unrolled is faster on CPU
      'remat': 'dots_no_batch' if big else 'none',
  })

  c.optim.name = 'adamw'
  c.optim.lr = lr
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = min(steps // 10, 2000)
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0

  c.train.steps = steps
  c.train.batch_size = batch
  c.train.eval_every = steps // 5 if big else 0  # tiny: one eval at the end (28 s on 2 cores)
  c.train.log_every = 50 if not big else 100
  c.train.cpu_matmul = 'onednn'  # x86 CPUs: oneDNN's matmuls, 1.05-1.15x here (bigjax/cpu/xla_options.py)
  c.checkpoint.every = 500 if not big else 2000
  c.mesh.fsdp = 1 if not big else -1
  c.mesh.data = -1 if not big else 1
  return c
