"""Silencing chatty converters: everything written to stdout/stderr, by Python or by C++."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile


class CapturedOutput:
    text = ""


@contextlib.contextmanager
def quiet_output():
    """Capture everything written to stdout/stderr, by Python or by C++ (file descriptors 1
    and 2): TensorFlow, the TFLite converter and torch.onnx are chatty. The text is in
    ``.text`` after the block, for error messages."""
    captured = CapturedOutput()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    python_text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(python_text), contextlib.redirect_stderr(python_text):
                yield captured
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = python_text.getvalue() + sink.read().decode("utf-8", "replace")
