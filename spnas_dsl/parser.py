"""Text -> parse tree -> IR: the Lark front end.

The LALR parser is built once per process from ``grammars/spnas.lark`` with positions kept.
The Transformer (:mod:`spnas_dsl.tree_to_ir`) decodes the tree into typed IR nodes; syntax
errors are turned into located messages here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from spnas_dsl.errors import Span, SpnasError, SpnasErrors, SpnasSyntaxError
from spnas_dsl.ir import (
    MAX_FILE_BYTES,
    Comment,
    Network,
)
from spnas_dsl.resources import data_path
from spnas_dsl.tree_to_ir import IRBuilder

# Friendly names for terminals in "expected ..." messages.
_TOKEN_NAMES = {
    "NAME": "a name", "PARAM_NAME": "a parameter name=", "SIGNED_NUMBER": "a number", "INT": "an integer", "SIZE": "a size HxWxC",
    "LBRACE": "'{'", "RBRACE": "'}'", "LESSTHAN": "'<'", "MORETHAN": "'>'", "EQUAL": "'='",
    "COMMA": "','", "VBAR": "'|'", "X": "'x'", "NETWORK": "'network'", "INPUT": "'input'",
    "CLASSES": "'classes'", "WIDTH": "'width'", "BN": "'bn'", "STEM": "'stem'", "HEAD": "'head'", "STAGE": "'stage'",
    "$END": "end of file",
}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    # Built in-process (~15-25 ms), never read from a cache: Lark's cache is a pickle, and
    # unpickling a file from a writable folder (~/.cache) runs whatever code was planted in it.
    return Lark(
        data_path("grammars", "spnas.lark").read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        cache=False,
        maybe_placeholders=True,
    )


def parse_text(text: str, filename: str = "<string>") -> Network:
    """Parse and validate ``.spnas`` source text into a :class:`Network`.

    Raises :class:`SpnasError` (with file, line and column) on any syntax or semantic error.
    """
    from spnas_dsl.validate import validate  # the semantic pass runs on the decoded IR

    comments: list[Comment] = []
    if len(text) > MAX_FILE_BYTES:  # before Lark: a huge file must fail fast, not parse for minutes
        raise SpnasSyntaxError(
            f"file too large: {len(text)} characters, the limit is {MAX_FILE_BYTES}", Span(filename, 1, 1)
        )
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise SpnasSyntaxError("empty file: expected 'network NAME { ... }'", Span(filename, 1, 1), text)
    try:
        tree = _lark().parse(text, on_error=None)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, filename) from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        code, hash_, note = _split_comment(line)
        if hash_:
            comments.append(Comment(line=line_no, text=note.rstrip(), trailing=bool(code.strip())))
    builder = IRBuilder(filename, text)
    try:
        network = builder.transform(tree)
    except VisitError as exc:  # unwrap errors raised inside the transformer
        if isinstance(exc.orig_exc, SpnasError):
            raise exc.orig_exc from None
        raise
    if builder.errors:
        raise SpnasErrors(builder.errors)
    network = network.model_copy(update={"comments": tuple(comments)})
    return validate(network, text)


def load(path: str | Path) -> Network:
    """Read, parse and validate a ``.spnas`` file. Errors name the file, line and column."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise SpnasSyntaxError("is a directory, not a .spnas file", Span(name, 1, 1))
    if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
        raise SpnasSyntaxError("not a regular file", Span(name, 1, 1))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never read a 50 MB file into memory to reject it
        if len(raw) > MAX_FILE_BYTES:
            size = max(path.stat().st_size, len(raw))
            raise SpnasSyntaxError(f"file too large: {size} bytes, the limit is {MAX_FILE_BYTES}", Span(name, 1, 1))
    except FileNotFoundError:
        raise SpnasSyntaxError("no such file", Span(name, 1, 1)) from None
    except OSError as exc:
        raise SpnasSyntaxError(f"cannot read file: {exc.strerror}", Span(name, 1, 1)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]  # valid UTF-8 up to the bad byte
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1  # in characters, as Lark counts
        raise SpnasSyntaxError(
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
            Span(name, line, column),
            raw.decode("utf-8", errors="replace"),  # for the caret excerpt
        ) from None
    return parse_text(text, name)


def _split_comment(line: str) -> tuple[str, str, str]:
    code, hash_, note = line.partition("#")
    return code, hash_, note


def _syntax_error(exc: UnexpectedInput, text: str, filename: str) -> SpnasSyntaxError:
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        lines = text.splitlines() or [""]
        span = Span(filename, len(lines), len(lines[-1]) + 1)
        expected = getattr(exc, "accepts", None) or getattr(exc, "expected", None) or set()  # accepts is exact
        return SpnasSyntaxError(f"unexpected end of file, expected {_expected(expected)}", span, text)
    span = Span(filename, exc.line, exc.column)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        return SpnasSyntaxError(f"unexpected character {char!r}", span, text)
    assert isinstance(exc, UnexpectedToken)
    return SpnasSyntaxError(
        f"unexpected {exc.token.value!r}, expected {_expected(exc.accepts or exc.expected)}", span, text
    )


def _expected(names) -> str:
    friendly = sorted({_TOKEN_NAMES.get(n, n.lower()) for n in names if not n.startswith("__")})
    if len(friendly) > 8:  # a network body expects 7 things, '}' included
        friendly = friendly[:8] + ["..."]
    return " or ".join(friendly) if friendly else "something else"
