"""File writing: atomic writes (a reader, or a crash, never sees a half-written file), canonical
safetensors bytes, figures."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename (its folder made).

    Any OS error (the folder is a file, the path a folder, no permission, disk full) is an
    :class:`OutputError` naming ``path``: every command that writes gets one clear message.
    """
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as exc:
        from spnas_dsl.errors import OutputError

        blocker = _first_file_on_the_way(path.parent)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
        raise OutputError(f"cannot write {path}: {why}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _first_file_on_the_way(out: Path) -> Path | None:
    """The first existing path of ``out`` and its parents that is not a folder (None: all are folders)."""
    for p in [out, *out.parents]:
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def out_path_problem(out: str | Path) -> str | None:
    """Why ``out`` cannot be an output folder (it or a parent is a file), or None."""
    out = Path(out)
    blocker = _first_file_on_the_way(out)
    if blocker is None:
        return None
    if blocker == out:
        return f"{out} is a file, not a folder"
    return f"{out}: {blocker} is a file, not a folder"


def save_figure(fig, path: str | Path, dpi: float | None = None) -> None:
    """Write a matplotlib figure as PNG, atomically (folders made), and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def canonical_safetensors(content: bytes) -> bytes:
    """``content`` with its JSON header rewritten with sorted keys.

    safetensors writes the ``__metadata__`` of its header from a hash map, whose order changes
    from process to process: with two metadata entries, the same weights gave two different
    files (and sha256s in build.json) about every other run. The tensor data is unchanged
    (offsets are relative to the end of the header); the header is space-padded to 8 bytes
    as safetensors itself does, so the data stays aligned.
    """
    (size,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + content[8 + size:]


def read_json_file(path: str | Path, what: str, error: type[Exception]) -> tuple[bytes, str, object]:
    """``(bytes, text, data)`` of a JSON file; every problem is one ``error`` naming ``path`` (a
    located one for a syntax error). ``what`` names the file in messages ("target table")."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    return raw, text, decode_json(text, str(path), what, error)


def decode_json(text: str, filename: str, what: str, error: type[Exception]) -> object:
    """``json.loads(text)``; a syntax error is a located ``error``, and so are the inputs the decoder
    refuses with a Python error (nesting past the recursion limit, integers of over 4300 digits)."""
    from spnas_dsl.errors import Span

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON in {what}: {exc.msg}", Span(filename, exc.lineno, exc.colno), text) from None
    except RecursionError:  # [[[[... nested deeper than the decoder's recursion limit
        raise error(f"invalid {what} {filename}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits (Python's int-conversion guard)
        raise error(f"invalid {what} {filename}: {exc.args[0].split(':')[0]}") from None
