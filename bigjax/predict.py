"""New inputs through a trained model: class predictions from a text classifier (--mode=predict),
outputs from a sequence-to-sequence model (--mode=generate), transcripts of WAV files from a speech
model (--mode=transcribe).

  python -m bigjax.main --config=experiments/imdb_lstm.py:offline --mode=predict \
      --text="async def main(): await asyncio.sleep(1)"
  python -m bigjax.main --config=experiments/translate.py:offline --mode=generate \
      --text="This package contains the documentation."
  python -m bigjax.main --config=experiments/spoken_conformer.py:offline --mode=transcribe --audio=a.wav

The text is read exactly as in training: the run's saved tokenizer, truncated to
data.seq_len and padded. Prints one JSON line per text: the predicted class and every
class's probability, the source and its output, or the file and its transcript. Audio is read as
16 kHz int16 (resampled if its rate differs) and decoded as at eval.
"""

import jax
import numpy as np

from bigjax import audio, data, evaluate, sharding, train
from bigjax.config import ConfigError
from bigjax.data import pairs, pipeline, speech
from bigjax.tasks import ctc


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


def generate_checkpoint(config, workdir: str, texts: list[str]) -> list[dict]:
  """Each text's output (a translation, a summary), decoded as at eval: the task's beam search."""
  if not data.DATASETS[config.data.name].target_feature:
    raise ConfigError(f'--mode=generate needs a sequence-to-sequence config: data.name={config.data.name!r} '
                      f'is not text pairs (for a language model use --mode=sample)')
  s = train.setup(config, workdir)
  tokenizer = s.dataset.tokenizer
  with sharding.active(s.mesh, s.rules):
    state, _ = train.restore_newest(s, config, workdir)
    source = data.encode_texts(tokenizer, texts, config.data.seq_len)[0].astype(np.int32)
    batch = {'inputs': source}  # the task decodes up to data.target_len tokens
    ids = jax.jit(lambda variables, batch: s.task.generate(s.model, variables, batch))(
        evaluate.variables(state), batch)
  return [{'source': text, 'output': pairs.text_of(tokenizer, row)}
          for text, row in zip(texts, np.asarray(ids))]


def transcribe_checkpoint(config, workdir: str, paths: list[str]) -> list[dict]:
  """Each WAV file's transcript, decoded as at eval (greedy, or task.beam_size's prefix beam search)."""
  if not data.DATASETS[config.data.name].speech:
    raise ConfigError(f'--mode=transcribe needs a speech config: data.name={config.data.name!r} is not '
                      f'speech')
  clips = [audio.read_wav(path, speech.SAMPLE_RATE) for path in paths]  # every file checked before any work
  s = train.setup(config, workdir)
  lengths = np.array([len(c) for c in clips], np.int32)
  batch = {'inputs': pipeline.pad_rows(clips, int(lengths.max())), 'input_length': lengths}
  with sharding.active(s.mesh, s.rules):
    state, _ = train.restore_newest(s, config, workdir)
    outputs = jax.jit(lambda variables, batch: s.task.generate(s.model, variables, batch))(
        evaluate.variables(state), batch)
  texts = ctc.transcripts(s.dataset.tokenizer, jax.device_get(outputs), config.task.beam_size)
  return [{'audio': path, 'seconds': round(len(c) / speech.SAMPLE_RATE, 2), 'transcript': text}
          for path, c, text in zip(paths, clips, texts)]
