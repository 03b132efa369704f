"""`librispeech_np`: LibriSpeech (Panayotov et al. 2015) as a TFDS dataset that reads without TensorFlow.

TFDS's own `librispeech` stores the same int16 speech, but its Audio feature needs TensorFlow even
to be read, which bigjax's core never imports. This builder keeps TFDS's features ('speech': int16
samples at 16 kHz, 'text', 'speaker_id', 'chapter_id', 'id') as plain tensors and its split names,
and prepares them from the corpus's own archives, extracted:

  for part in train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other; do
    curl -L https://www.openslr.org/resources/12/$part.tar.gz | tar xz -C DIR; done
  python -m bigjax.main --config=experiments/librispeech_conformer.py --config.data.source_dir=DIR

(DIR/LibriSpeech/<part>/<speaker>/<chapter>/*.flac and *.trans.txt.) The FLAC files are decoded
with soundfile, once, when the dataset is prepared; parts missing from DIR are left out (a config
that reads one is then an error naming it).
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from bigjax.config import ConfigError

PARTS = {  # TFDS's split names -> the archives' folders
    'train_clean100': 'train-clean-100', 'train_clean360': 'train-clean-360',
    'train_other500': 'train-other-500', 'dev_clean': 'dev-clean', 'dev_other': 'dev-other',
    'test_clean': 'test-clean', 'test_other': 'test-other',
}


class LibrispeechNp(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'TFDS librispeech 2.1.2\'s features as int16 tensors, from the archives.'}

  def __init__(self, *, source_dir: str = '', **kwargs):
    self.source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'speech': tfds.features.Tensor(shape=(None,), dtype=np.int16),  # 16 kHz
            'text': tfds.features.Text(),
            'speaker_id': np.int64,
            'chapter_id': np.int64,
            'id': np.str_,
        }),
        supervised_keys=('speech', 'text'),
        disable_shuffling=True,  # utterances in the corpus's order, on every machine
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the archives are not downloaded here: see the module's doc
    root = os.path.join(self.source_dir, 'LibriSpeech')
    found = {part: os.path.join(root, folder) for part, folder in PARTS.items()
             if os.path.isdir(os.path.join(root, folder))}
    if not found:
      where = f'{root} holds none of its parts' if self.source_dir else 'no data.source_dir is given'
      raise ConfigError(f'LibriSpeech is not prepared and {where}: extract its archives into a folder DIR '
                        '(bigjax/data/librispeech.py says how) and pass --config.data.source_dir=DIR')
    return {part: self._generate_examples(path) for part, path in found.items()}

  def _generate_examples(self, path):
    import soundfile  # noqa: PLC0415 (only preparing needs it)
    for directory, subdirs, files in sorted(os.walk(path)):
      subdirs.sort()
      for name in sorted(f for f in files if f.endswith('.trans.txt')):
        with open(os.path.join(directory, name)) as f:
          for line in f:
            key, text = line.rstrip('\n').split(' ', 1)
            speaker, chapter = (int(x) for x in key.split('-')[:2])
            speech, rate = soundfile.read(os.path.join(directory, f'{key}.flac'), dtype='int16')
            assert rate == 16000, (key, rate)
            yield key, {'speech': speech, 'text': text, 'speaker_id': speaker, 'chapter_id': chapter,
                        'id': key}
