"""A multi-layer perceptron classifier: the tutorial's first model."""

import flax.linen as nn

from bigjax.models.layers import ACTIVATIONS, dense


class MLP(nn.Module):
  num_outputs: int
  depth: int = 2  # hidden layers
  width: int = 256
  activation: str = 'relu'
  dropout: float = 0.0

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    x = inputs.reshape(inputs.shape[0], -1)  # images and vectors alike
    act = ACTIVATIONS[self.activation]
    # Alternate (embed -> mlp), (mlp -> embed) so tensor parallelism splits
    # every other layer's output and the next layer's input, as in a Transformer MLP.
    names = ('embed', 'mlp')
    for i in range(self.depth):
      x = act(dense(self.width, names, name=f'hidden_{i}')(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      names = names[::-1]
    return dense(self.num_outputs, (names[0], 'classes'), name='head')(x)
