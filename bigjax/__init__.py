"""bigjax: neural networks from an MLP on a laptop CPU to a Transformer on a pod slice."""

from bigjax import host_memory

host_memory.keep_freed_memory()  # before jax starts its CPU threads; see host_memory.py
