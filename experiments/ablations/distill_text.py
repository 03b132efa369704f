"""Knowledge distillation of the offline LSTM text classifier into a model a quarter of its size.

  python -m bigjax.sweep --sweep=experiments/ablations/distill_text.py --seeds=3 \
      --workdir=runs/ablations/distill_text

Three variants, three seeds each: the teacher (imdb_lstm:offline, 5.91 M parameters), the student
trained alone (imdb_lstm:offline_student, 1.41 M), and the same student distilled from the seed-0
teacher (distill.teacher is that run's folder, so keep this --workdir, and the order: teachers first).

Result: README.md's distillation table (test macro F1, mean and std over the seeds).
"""


TEACHER = 'runs/ablations/distill_text/teacher/seed0'


def get_sweep():
  student = 'experiments/imdb_lstm.py:offline_student'
  return [{'name': 'teacher', 'config': 'experiments/imdb_lstm.py:offline'},
          {'name': 'student', 'config': student},
          {'name': 'distilled', 'config': student, 'distill.teacher': TEACHER},
          # Hinton et al.'s regime: a higher temperature, and most of the weight on the soft targets.
          {'name': 'distilled_t4', 'config': student, 'distill.teacher': TEACHER, 'distill.alpha': 0.9,
           'distill.temperature': 4.0}]
