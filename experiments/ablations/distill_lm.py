"""Knowledge distillation of a language model: a 6 x 192 teacher into lm_gpt:tiny (4 x 128).

  python -m bigjax.main --config=experiments/lm_gpt.py:tiny_teacher --workdir=runs/lm_teacher
  python -m bigjax.sweep --sweep=experiments/ablations/distill_lm.py --seeds=3 \
      --workdir=runs/ablations/distill_lm

The teacher (3.0 M parameters, the same SentencePiece vocabulary of 2,048) trains once; the sweep
runs :tiny (1.05 M) alone and distilled from it, per token, three seeds each.

Result (2-core Xeon, eval bits per byte, seeds 0-2): teacher 1.625 (seed 0), :tiny alone
1.665 +- 0.011, distilled 1.653 +- 0.004; each seed's distilled student beat the same seed alone.
"""

TEACHER = 'runs/lm_teacher'


def get_sweep():
  student = 'experiments/lm_gpt.py:tiny'
  return [{'name': 'student', 'config': student},
          {'name': 'distilled', 'config': student, 'distill.teacher': TEACHER}]
