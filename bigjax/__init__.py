"""bigjax: neural networks from an MLP on a laptop CPU to a Transformer on a pod slice."""

__version__ = '0.1.0'  # pyproject.toml's; an export records it
