"""Class predictions for new text from a trained text classifier (--mode=predict).

  python -m bigjax.main --config=experiments/imdb_lstm.py:offline --mode=predict \
      --text="async def main(): await asyncio.sleep(1)"

The text is read exactly as in training: the run's saved tokenizer, truncated to
data.seq_len and padded. Prints one JSON line per text: the predicted class and
every class's probability.
"""

import jax
import numpy as np

from bigjax import data, sharding, train
from bigjax.config import ConfigError


def predict_checkpoint(config, workdir: str, texts: list[str]) -> list[dict]:
  if not data.DATASETS[config.data.name].label_feature:
    raise ConfigError(f'--mode=predict needs a text classifier: data.name={config.data.name!r} is not '
                      f'labelled text')
  s = train.setup(config, workdir)
  names = s.dataset.class_names or tuple(str(i) for i in range(s.dataset.num_classes))
  with sharding.active(s.mesh, s.rules):
    state, _ = train.restore_newest(s, config, workdir)
    inputs = data.encode_texts(s.dataset.tokenizer, texts, config.data.seq_len)[0].astype(np.int32)
    logits = s.model.apply({'params': state.params, **state.model_state}, inputs, train=False)
    probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  return [{'text': text, 'label': names[int(p.argmax())],
           'probabilities': {name: round(float(q), 4) for name, q in zip(names, p)}}
          for text, p in zip(texts, probabilities)]
