"""Knowledge distillation of a language model: a 6 x 192 teacher into lm_gpt:tiny (4 x 128).

  python -m bigjax.sweep --sweep=experiments/ablations/distill_lm.py --seeds=3 \
      --workdir=runs/ablations/distill_lm

Three variants, three seeds each: the teacher (lm_gpt:tiny_teacher, 3.05 M parameters, the same
SentencePiece vocabulary of 2,048), :tiny (1.05 M) alone, and :tiny distilled from the seed-0
teacher, per token (keep this --workdir, and the order: teachers first).

Result (2-core Xeon, eval bits per byte, mean and sample std over seeds 0-2): teacher 1.616 +- 0.018
(1.625, 1.629, 1.595), :tiny alone 1.665 +- 0.011, distilled 1.653 +- 0.004; each seed's distilled
student beat the same seed alone. The students' figures are from an earlier commit's run, with
the same seed-0 teacher config (trained apart from the sweep then).
"""

TEACHER = 'runs/ablations/distill_lm/teacher/seed0'


def get_sweep():
  student = 'experiments/lm_gpt.py:tiny'
  return [{'name': 'teacher', 'config': 'experiments/lm_gpt.py:tiny_teacher'},
          {'name': 'student', 'config': student},
          {'name': 'distilled', 'config': student, 'distill.teacher': TEACHER}]
