"""Every dataset bigjax knows by name: where its examples come from and what they hold. A new
dataset is one entry here (docs/extending.md)."""

from collections.abc import Callable
from typing import NamedTuple

from bigjax.data import (
  debian,
  digits,
  digits_multilabel,
  images,
  librispeech,
  python_stdlib,
  spoken,
  stdlib_snippets,
)


class DatasetSpec(NamedTuple):
  tfds_name: str
  splits: dict  # our split ('train', 'eval', 'test') -> TFDS split string
  num_classes: int
  preprocess: Callable  # numpy batch -> model-ready numpy batch
  builder: type | None = None  # offline: a TFDS builder prepared on first use
  text_feature: str | None = None  # text: tokenized (for language modelling, packed)
  label_feature: str | None = None  # text classification: the class of each text
  target_feature: str | None = None  # text pairs: the target text (text_feature is the source)
  builder_config: str | None = None  # offline builders with several configs (language pairs)
  module: str | None = None  # a TFDS module that registers the builder (not imported by tfds itself)
  multi_label: bool = False  # 'label' is a multi-hot vector over num_classes (task.name='multilabel')
  # Images: per-channel mean and std of x / 255 (the train split's, or the ones the literature uses),
  # and the stored (H, W, C), None where sizes vary (read as lists, cropped per example).
  mean: tuple | None = None
  std: tuple | None = None
  image_shape: tuple | None = None
  record: Callable | None = None  # a source example -> the features kept (default: all)
  large: bool = False  # does not fit in host memory: read with data.in_memory=False
  speech: bool = False  # int16 'speech' at 16 kHz and its 'text' (bigjax/data/speech.py)


_SPLITS = {'train': 'train', 'eval': 'validation', 'test': 'test'}  # ours -> TFDS's
_LIBRISPEECH_TRAIN = 'train_clean100+train_clean360+train_other500'
_VOC = dict(mean=images.IMAGENET_MEAN, std=images.IMAGENET_STD, image_shape=(None, None, 3),
            record=images.voc_record, multi_label=True)
DATASETS = {
    'digits': DatasetSpec('digits', _SPLITS, 10, images.to_inputs, builder=digits.Digits,
                          mean=(0.3054,), std=(0.3764,), image_shape=(8, 8, 1)),  # its train split's
    'digits_multilabel': DatasetSpec('digits_multilabel', _SPLITS, 10, images.multi_hot_to_inputs,
                                     builder=digits_multilabel.DigitsMultilabel, multi_label=True,
                                     image_shape=(16, 16, 1)),
    'mnist': DatasetSpec('mnist', {'train': 'train[:55000]', 'eval': 'train[55000:]', 'test': 'test'},
                         10, images.to_inputs, mean=(0.1307,), std=(0.3081,), image_shape=(28, 28, 1)),
    'cifar10': DatasetSpec('cifar10', {'train': 'train[:45000]', 'eval': 'train[45000:]', 'test': 'test'},
                           10, images.to_inputs, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                           image_shape=(32, 32, 3), record=images.image_and_label),
    # ImageNet (ILSVRC 2012, manual download): 1% of train held out for model selection (big_vision's
    # minival); test is the validation set, on which the literature reports.
    'imagenet2012': DatasetSpec('imagenet2012', {'train': 'train[:99%]', 'eval': 'train[99%:]',
                                                 'test': 'validation'},
                                1000, images.to_inputs, mean=images.IMAGENET_MEAN, std=images.IMAGENET_STD,
                                image_shape=(None, None, 3), record=images.image_and_label, large=True),
    # Pascal VOC classification, multi-label over 20 classes, ImageNet's statistics (its usual models
    # are ImageNet's). 2007's test labels are public; 2012's are not, so its validation set is halved.
    'voc2007': DatasetSpec('voc/2007', _SPLITS, images.VOC_CLASSES, images.to_inputs, **_VOC),
    'voc2012': DatasetSpec('voc/2012', {'train': 'train', 'eval': 'validation[:50%]',
                                        'test': 'validation[50%:]'},
                           images.VOC_CLASSES, images.to_inputs, **_VOC),
    'imdb_reviews': DatasetSpec('imdb_reviews',
                                {'train': 'train[:90%]', 'eval': 'train[90%:]', 'test': 'test'},
                                2, None, text_feature='text', label_feature='label'),
    'python_stdlib_snippets': DatasetSpec('python_stdlib_snippets', _SPLITS, len(stdlib_snippets.PACKAGES),
                                          None, builder=stdlib_snippets.PythonStdlibSnippets,
                                          text_feature='text', label_feature='label'),
    'python_stdlib': DatasetSpec('python_stdlib', _SPLITS, None, None, builder=python_stdlib.PythonStdlib,
                                 text_feature='text'),
    'tiny_shakespeare': DatasetSpec('tiny_shakespeare', _SPLITS, None, None, text_feature='text'),
    'lm1b': DatasetSpec('lm1b', {'train': 'train', 'eval': 'test[:50%]', 'test': 'test[50%:]'},
                        None, None, text_feature='text'),
    # Text pairs: source -> target.
    'wmt14_en_de': DatasetSpec('wmt14_translate/de-en', _SPLITS, None, None, text_feature='en',
                               target_feature='de', module='tensorflow_datasets.translate.wmt14'),
    'wmt_t2t_en_de': DatasetSpec('wmt_t2t_translate/de-en', _SPLITS, None, None, text_feature='en',
                                 target_feature='de', module='tensorflow_datasets.translate.wmt_t2t'),
    'cnn_dailymail': DatasetSpec('cnn_dailymail', _SPLITS, None, None, text_feature='article',
                                 target_feature='highlights', module='tensorflow_datasets.summarization'),
    'xsum': DatasetSpec('xsum', _SPLITS, None, None, text_feature='document', target_feature='summary',
                        module='tensorflow_datasets.summarization'),
    'debian_en_de': DatasetSpec('debian_translate/en-de', _SPLITS, None, None, builder=debian.DebianTranslate,
                                text_feature='source', target_feature='target', builder_config='en-de'),
    'debian_en_fr': DatasetSpec('debian_translate/en-fr', _SPLITS, None, None, builder=debian.DebianTranslate,
                                text_feature='source', target_feature='target', builder_config='en-fr'),
    # Speech: characters (or sentencepiece units) from 16 kHz audio. LibriSpeech's 960 hours
    # (train-clean-100, -360, train-other-500); test-clean and test-other are the two reported.
    'librispeech': DatasetSpec('librispeech_np', {'train': _LIBRISPEECH_TRAIN, 'eval': 'dev_clean',
                                                  'test': 'test_clean'}, None, None, speech=True, large=True,
                               builder=librispeech.LibrispeechNp),
    'librispeech_other': DatasetSpec('librispeech_np', {'train': _LIBRISPEECH_TRAIN, 'eval': 'dev_other',
                                                        'test': 'test_other'}, None, None, speech=True,
                                     large=True, builder=librispeech.LibrispeechNp),
    # Offline: English sentences spoken by eSpeak NG voices, with held-out voices and sentences.
    'spoken_corpus': DatasetSpec('spoken_corpus', _SPLITS, None, None, builder=spoken.SpokenCorpus,
                                 speech=True),
    'debian_summaries': DatasetSpec('debian_summarize', _SPLITS, None, None, builder=debian.DebianSummarize,
                                    text_feature='description', target_feature='synopsis'),
}
