"""File readers: each turns one file layout into normalised examples (``text_a``, ``text_b``, ``label``)."""

from lightning_kd.data.readers.generic import iter_table_file, resolve_text_columns, table_columns
from lightning_kd.data.readers.rotten_tomatoes import iter_rotten_tomatoes, movie_split
from lightning_kd.data.readers.task_files import iter_task_file
from lightning_kd.data.readers.twenty_newsgroups import iter_twenty_newsgroups

__all__ = [
    "iter_rotten_tomatoes",
    "iter_table_file",
    "iter_task_file",
    "iter_twenty_newsgroups",
    "movie_split",
    "resolve_text_columns",
    "table_columns",
]
