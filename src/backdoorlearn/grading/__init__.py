"""Grade backdoor defenses: the CSAW HackML evaluation and an assignment kit for a class."""

from ._assignment import format_grades, grade_assignment, grades_csv, make_assignment
from ._evaluate import Submission, evaluate_submission, format_evaluation, load_submission

__all__ = [
    "Submission",
    "evaluate_submission",
    "format_evaluation",
    "format_grades",
    "grade_assignment",
    "grades_csv",
    "load_submission",
    "make_assignment",
]
