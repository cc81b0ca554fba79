"""DistilBERT's student initialisation: teacher layers spread evenly from the first to the last.

Sanh et al. (2019) initialise the 6-layer student from BERT-base layers 0, 2, 4, 7, 9, 11 ("one
layer out of two", keeping both ends). :func:`spread_teacher_layers` gives that list for 12→6 and
the same rule for other depths. Use its result with the core's explicit selection::

    student_init: teacher_layers
    student_layers: [0, 2, 4, 7, 9, 11]   # spread_teacher_layers(12, 6)

(The GKD reference instead copies the *first* L_S layers, ``student_init: teacher_first``.)
"""

from __future__ import annotations

import math


def spread_teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """0-based teacher layers ``round(i·(L_T−1)/(L_S−1))``, ``i = 0…L_S−1`` (halves round up).

    12→6: ``[0, 2, 4, 7, 9, 11]`` (the official DistilBERT choice); 6→3: ``[0, 3, 5]``; 24→6:
    ``[0, 5, 9, 14, 18, 23]``. A one-layer student takes the teacher's last layer.

    Raises:
        ValueError: ``student_layers`` is not in ``1…teacher_layers``.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"A student made of teacher layers needs between 1 and {teacher_layers} layers, got {student_layers}."
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]
