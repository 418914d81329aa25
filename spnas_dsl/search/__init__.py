"""``spnasc search``: Single-Path NAS over a ``.spnas`` search space (see :mod:`spnas_dsl.search.loop`).

- :mod:`~spnas_dsl.search.config`: :class:`SearchConfig` (every setting that decides the result).
- :mod:`~spnas_dsl.search.setup`: :func:`~spnas_dsl.search.setup.prepare` (checks, data, supernet,
  optimizer, resume), the :class:`~spnas_dsl.search.setup.Setup` the loop runs on.
- :mod:`~spnas_dsl.search.loop`: :func:`run_search` (setup, the loop with checkpoints, the result).
- :mod:`~spnas_dsl.search.control`: :class:`LambdaController`, the thresholds' learning rate.
- :mod:`~spnas_dsl.search.methods`: ``--method`` (:data:`METHODS`): what is picked at the end.
- :mod:`~spnas_dsl.search.budget`: :func:`fit_to_budget` (the network into the budget band),
  :func:`latency_percentile` (a network from decisions: :func:`spnas_dsl.passes.with_options`).
- :mod:`~spnas_dsl.search.selection`: ``--method evolution`` (:func:`evolve`, :class:`SupernetScorer`).
- :mod:`~spnas_dsl.search.proxy`: kernel decisions a training image size cannot inform.
- :mod:`~spnas_dsl.search.report`: ``search.json`` and the header of ``arch.spnas``.
- :mod:`~spnas_dsl.search.plots`: the PNG plots (``python -m spnas_dsl.search.plots RUN_DIR``).
"""

from spnas_dsl.search.config import SearchConfig
from spnas_dsl.search.control import LambdaController
from spnas_dsl.search.loop import SearchResult, default_out_dir, load_resume, run_search
from spnas_dsl.search.methods import METHODS

__all__ = ["METHODS", "LambdaController", "SearchConfig", "SearchResult", "default_out_dir", "load_resume",
           "run_search"]
