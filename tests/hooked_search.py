"""``python tests/hooked_search.py STEP search ARGS...``: ``spnasc search ARGS`` that ends the process
abruptly (``os._exit(99)``, no clean-up, like a killed process) right after step STEP (counting
from 1). The hook is passed to the loop (``spnas_dsl.training.Hooks``); the CLI itself has none.
"""

from __future__ import annotations

import functools
import os
import sys

import spnas_dsl.search
from spnas_dsl.cli import main
from spnas_dsl.training import Hooks


def exit_after(step: int) -> Hooks:
    def after_step(done: int) -> None:
        if done == step:
            os._exit(99)

    return Hooks(after_step=after_step)


if __name__ == "__main__":
    hooks = exit_after(int(sys.argv[1]))
    spnas_dsl.search.run_search = functools.partial(spnas_dsl.search.run_search, hooks=hooks)
    sys.exit(main(sys.argv[2:]))
