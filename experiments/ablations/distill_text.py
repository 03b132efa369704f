"""Knowledge distillation of the offline LSTM text classifier into a model a quarter of its size.

  python -m bigjax.sweep --sweep=experiments/ablations/distill_text.py --seeds=3 \
      --workdir=runs/ablations/distill_text

Three variants, three seeds each: the teacher (imdb_lstm:offline, 5.91 M parameters), the student
trained alone (imdb_lstm:offline_student, 1.41 M), and the same student distilled from the seed-0
teacher (distill.teacher is that run's folder, so keep this --workdir, and the order: teachers first).

Result (2-core Xeon, test macro F1, mean and std over seeds 0-2): teacher 0.725 +- 0.004, student
alone 0.664 +- 0.012, distilled 0.605 +- 0.036 (T 2), 0.571 +- 0.005 (T 4, alpha 0.9), 0.667 +- 0.011
(T 1, inside the spread; tried third, after the first two). The teacher fits its training set (97%
there), so its soft targets carry little the labels do not.
"""


TEACHER = 'runs/ablations/distill_text/teacher/seed0'


def get_sweep():
  student = 'experiments/imdb_lstm.py:offline_student'
  return [{'name': 'teacher', 'config': 'experiments/imdb_lstm.py:offline'},
          {'name': 'student', 'config': student},
          {'name': 'distilled', 'config': student, 'distill.teacher': TEACHER},
          # Hinton et al.'s regime: a higher temperature, and most of the weight on the soft targets.
          {'name': 'distilled_t4', 'config': student, 'distill.teacher': TEACHER, 'distill.alpha': 0.9,
           'distill.temperature': 4.0},
          # No softening: the teacher's probabilities as they are, half the loss.
          {'name': 'distilled_t1', 'config': student, 'distill.teacher': TEACHER, 'distill.temperature': 1.0}]
