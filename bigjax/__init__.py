"""bigjax: neural networks from an MLP on a laptop CPU to a Transformer on a pod slice."""
