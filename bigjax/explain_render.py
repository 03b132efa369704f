"""Attribution maps as files (--mode=explain): a PNG of an image and its heatmap side by side, or an
HTML page of a text with each token shaded by its score, and the same as JSON.

Red is evidence for the class explained, blue against it; the colour scale is symmetric about zero
and set by the largest magnitude in the example, so shades compare within one map, not across maps.
"""

import html
import json

import numpy as np
from etils import epath

from bigjax import files


def write(out_dir: epath.Path, example, attribution: np.ndarray, line: dict, *, step: int,
          probabilities: dict) -> str:
  """Writes one example's map (and for text its JSON); returns the path of the PNG or HTML page."""
  title = (f'{line["method"]} for class {line["target"]} (step {step}); predicted {line["label"]} '
           f'p={line["probability"]:.3f}' + (f', true {line["true_label"]}' if 'true_label' in line else ''))
  if isinstance(example.shown, np.ndarray):
    path = out_dir / f'{example.name}.png'
    image_png(path, example.shown, attribution, title)
    return str(path)
  scores = attribution[:len(example.shown)].tolist()
  record = {**{k: v for k, v in line.items() if k != 'path'}, 'step': step, 'tokens': example.shown,
            'scores': [round(s, 6) for s in scores],
            'probabilities': {name: round(p, 6) for name, p in probabilities.items()}}
  with files.replaced_atomically(str(out_dir / f'{example.name}.json'), 'w') as f:
    json.dump(record, f, ensure_ascii=False)
  path = out_dir / f'{example.name}.html'
  with files.replaced_atomically(str(path), 'w') as f:
    f.write(text_html(example.shown, scores, title))
  return str(path)


def heatmap(attribution: np.ndarray, shape: tuple) -> np.ndarray:
  """(H, W) from an attribution over the image (summed over channels), or over a grid of patches
  (each patch's score spread over its pixels)."""
  a = attribution.sum(axis=-1) if attribution.ndim == 3 else attribution
  if a.shape != shape:
    a = np.kron(a, np.ones((shape[0] // a.shape[0], shape[1] // a.shape[1])))
  return a


def image_png(path: epath.Path, image: np.ndarray, attribution: np.ndarray, title: str) -> None:
  import matplotlib  # noqa: PLC0415 (only image maps need it)
  matplotlib.use('Agg')  # files only, never a display
  import matplotlib.pyplot as plt  # noqa: PLC0415

  h, w = image.shape[:2]
  a = heatmap(attribution, (h, w))
  limit = float(np.abs(a).max()) or 1.0
  small = max(h, w) < 64  # few pixels: show them as squares, not smoothed
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
  axes[0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray', vmin=0, vmax=255,
                 interpolation='nearest' if small else 'bilinear')
  axes[0].set_title('input')
  shown = axes[1].imshow(a, cmap='RdBu_r', vmin=-limit, vmax=limit,
                         interpolation='nearest' if small else 'bilinear')
  axes[1].set_title('attribution (red: for, blue: against)')
  fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  with files.replaced_atomically(str(path), 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


def text_html(tokens: list[str], scores: list[float], title: str) -> str:
  limit = max((abs(s) for s in scores), default=0.0) or 1.0
  spans = []
  for token, score in zip(tokens, scores):
    alpha = abs(score) / limit
    colour = f'rgba(220, 40, 40, {alpha:.3f})' if score > 0 else f'rgba(40, 90, 220, {alpha:.3f})'
    spans.append(f'<span style="background:{colour}" title="{score:.4g}">{html.escape(token)}</span>')
  return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>bigjax explain</title>\n'
          '<style>body{font-family:monospace;max-width:60em;line-height:1.9}'
          'span{padding:1px 2px;border-radius:3px}</style></head>\n'
          f'<body><p>{html.escape(title)}</p>\n'
          '<p>Red: evidence for the class, blue: against; hover over a token for its score.</p>\n'
          f'<p>{" ".join(spans)}</p></body></html>\n')
