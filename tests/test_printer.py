"""The printer: canonical text, comments kept, and the round trip parse(print(ir)) == ir."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spnas_dsl.ir import CandidateSet, Comment, Layer
from spnas_dsl.parser import load, parse_text
from spnas_dsl.printer import format_candidates, format_layer, format_network
from spnas_dsl.validate import validate

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MESSY = """\
   # leading note
network   messy{input 32x32x3 classes 10  # on the first statement of its line
    stem conv c=16 k=3 s=2   # the stem
stage a c=16 s=1{mbconv e=1 k=3}
  stage   b   c=24   s=2 {
 mbconv k=<5,3> e=<6,3>
            # before the repeats
 skip|mbconv k=<3,5> e=<3,6>
 mbconv   k=<3,5> e=<3,6> |   skip
 2x mbconv k=<3,5> e=<3,6> | skip
 mbconv k=<3> e=<6>     mbconv k=3 e=6
 }
 head conv dropout=0.2 c=64}
# trailing note
"""

MESSY_CANONICAL = """\
# leading note
network messy {  # on the first statement of its line
    input 32x32x3
    classes 10
    width 1.0
    stem conv k=3 c=16 s=2  # the stem
    stage a c=16 s=1 {
        mbconv k=3 e=1
    }
    stage b c=24 s=2 {
        mbconv k=<3,5> e=<3,6>
        # before the repeats
        4x mbconv k=<3,5> e=<3,6> | skip
        2x mbconv k=3 e=6
    }
    head conv c=64 dropout=0.2
}
# trailing note
"""


def test_format_choice_and_layer():
    assert format_candidates("k", CandidateSet(values=(3,))) == "k=3"
    assert format_candidates("e", CandidateSet(values=(3, 6))) == "e=<3,6>"
    both = Layer(kernel=CandidateSet(values=(3, 5)), expansion=CandidateSet(values=(6,)), skip=True)
    assert format_layer(both) == "mbconv k=<3,5> e=6 | skip"
    assert format_layer(Layer(skip=True)) == "skip"


def test_messy_layout_becomes_canonical():
    net = parse_text(MESSY)
    out = format_network(net)
    assert out == MESSY_CANONICAL
    assert parse_text(out) == net
    assert format_network(parse_text(out)) == out


def test_numbers_are_written_exactly():
    base = MESSY_CANONICAL.replace("width 1.0", "width 1.4").replace("dropout=0.2", "dropout=0.1234567891")
    out = format_network(parse_text(base))
    assert "    width 1.4\n" in out and "dropout=0.1234567891\n" in out
    tiny = format_network(parse_text(base.replace("dropout=0.1234567891", "dropout=0.00001")))
    assert "dropout=1e-05\n" in tiny and parse_text(tiny).head.dropout == 0.00001
    whole = format_network(parse_text(base.replace("width 1.4", "width 2")))
    assert "    width 2.0\n" in whole


def test_header_lines_are_written_as_comments():
    net = parse_text(MESSY_CANONICAL)
    out = format_network(net, header=["found by search", ""])
    assert out.startswith("# found by search\n#\n# leading note\nnetwork messy {  #")
    assert parse_text(out) == net


def test_comments_are_never_lost():
    text = MESSY_CANONICAL.replace("    }\n    head", "        # end of b\n    }  # closing b\n    head")
    text = text.replace("{  # on the first statement of its line", "{  # open")
    out = format_network(parse_text(text))
    for note in ["leading note", "the stem", "before the repeats", "end of b", "closing b", "open", "trailing note"]:
        assert out.count(f"# {note}") == 1, note
    # comments at a closing brace stay there: inside the block before it, or at the end of its line
    assert "        2x mbconv k=3 e=6\n        # end of b\n    }  # closing b\n    head" in out
    assert out.endswith("}\n# trailing note\n")
    assert format_network(parse_text(out)) == out


def test_trailing_comments_of_folded_lines_are_kept():
    two = "        mbconv k=3 e=6  # one\n        mbconv k=3 e=6  # two\n"
    text = MESSY_CANONICAL.replace("        2x mbconv k=3 e=6\n", two)
    out = format_network(parse_text(text))
    assert "        2x mbconv k=3 e=6  # one\n" in out and "# two" in out
    assert format_network(parse_text(out)) == out


def test_comments_survive_statement_reordering():
    text = MESSY_CANONICAL.replace(
        "    input 32x32x3\n    classes 10\n", "    # how many\n    classes 10  # ten\n    input 32x32x3  # size\n"
    )
    out = format_network(parse_text(text))
    assert out.index("    input 32x32x3") < out.index("    classes 10")
    for note in ["how many", "ten", "size"]:
        assert out.count(f"# {note}") == 1, note
    assert format_network(parse_text(out)) == out


def test_shipped_files_are_canonical(shipped_file):
    text = shipped_file.read_text(encoding="utf-8")
    net = load(shipped_file)
    assert format_network(net) == text
    assert parse_text(format_network(net)) == net


def test_concrete_network_prints_without_candidate_sets(repo):
    out = format_network(load(repo / "examples" / "spnasnet.spnas"))
    assert "<" not in out and ">" not in out


# -- properties over generated IR ------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_round_trip_of_generated_networks(valid_networks, data):
    net = data.draw(valid_networks)
    assert validate(net) is net  # the strategy only builds valid networks
    text = format_network(net)
    again = parse_text(text)
    assert again == net
    assert format_network(again) == text  # printing is idempotent
    # the printed form is the canonical one: 4-space indentation, `<...>` only for sets of 2+
    assert all(re.fullmatch(r"(    )*\S(.*\S)?", line) for line in text.splitlines())
    assert not re.search(r"<\d+>", text)


SEPARATORS = [" ", "  ", "\n", "\t", " \n\n   ", "\n\t\t", " # note\n", "\n# note\n  "]


@settings(PROPERTY, max_examples=60)
@given(data=st.data(), rnd=st.randoms(use_true_random=False))
def test_any_layout_formats_to_the_canonical_text(valid_networks, data, rnd):
    net = data.draw(valid_networks)
    canonical = format_network(net)
    tokens = canonical.split()  # the layout may change anywhere between tokens, comments included
    seps = [rnd.choice(SEPARATORS) for _ in range(len(tokens) + 1)]
    messy = seps[0].lstrip(" \t") + "".join(tok + sep for tok, sep in zip(tokens, seps[1:]))
    parsed = parse_text(messy)
    assert parsed == net
    out = format_network(parsed)
    # comments are all kept, the code is the canonical text, and formatting again changes nothing
    assert out.count("# note") == messy.count("# note")
    code = "\n".join(line.split("  #")[0] for line in out.splitlines() if not line.lstrip().startswith("#"))
    assert code + "\n" == canonical
    assert format_network(parse_text(out)) == out


def test_comment_model_is_kept_on_the_network():
    net = parse_text(MESSY)
    assert Comment(line=1, text=" leading note") in net.comments
    assert all(c.trailing for c in net.comments if "stem" in c.text)


def test_language_doc_examples_are_valid_and_current(repo):
    """docs/language.md: every network in it parses; its listings of shipped files are the files."""
    doc = (repo / "docs" / "language.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", doc, re.DOTALL)
    networks = [b for b in blocks if re.search(r"^\s*network\s+\w+\s*\{", b, re.MULTILINE) and b.rstrip().endswith("}")]
    assert len(networks) >= 5
    for block in networks:
        parse_text(block)
    messy = next(i for i, b in enumerate(blocks) if "network   messy" in b)
    assert format_network(parse_text(blocks[messy])) == blocks[messy + 1]  # the before/after pair
    for name in ["spaces/mnasnet.spnas", "examples/spnasnet.spnas"]:
        assert (repo / name).read_text(encoding="utf-8") in blocks, name
    body = (repo / "spaces/fashion_mnist.spnas").read_text(encoding="utf-8")
    assert body[body.index("\nnetwork ") + 1 :] in blocks
