"""``spnasc train``: train one concrete network (see :mod:`spnas_dsl.train.loop`).

- :mod:`~spnas_dsl.train.settings`: :class:`TrainSettings`, the files of a run folder, resume rules.
- :mod:`~spnas_dsl.train.prepare`: :func:`prepare` (every check, the model; nothing written),
  :func:`init_from_search`, :func:`load_trained` (a finished run read back).
- :mod:`~spnas_dsl.train.loop`: :func:`train`, :class:`Run` (the loop, checkpoints, outputs).
"""

from spnas_dsl.train.loop import Run, train
from spnas_dsl.train.prepare import init_from_search, load_trained, prepare
from spnas_dsl.train.settings import TrainResult, TrainSettings

__all__ = ["Run", "TrainResult", "TrainSettings", "init_from_search", "load_trained", "prepare", "train"]
