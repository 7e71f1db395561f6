"""The play page's protocol: every malformed message is refused with a sentence (never a
deep traceback), valid ones parse to what the page meant, and frame messages round-trip."""

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrixgame.serve.protocol import (
    MAX_MESSAGE,
    Input,
    Record,
    Reset,
    pack_frames,
    parse_message,
    unpack_frames,
)


def test_valid_messages_parse_to_what_the_page_meant():
    msg = parse_message('{"type": "input", "seq": 3, "keys": ["W", "A"], "mouse": [12, -4.5]}')
    assert msg == Input(3, frozenset({"W", "A"}), (12.0, -4.5))
    assert parse_message('{"type": "input", "seq": 0}') == Input(0, frozenset(), (0.0, 0.0))
    assert parse_message('{"type": "reset", "start": 1}') == Reset(1)
    assert parse_message('{"type": "record", "on": false}') == Record(False)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "jump"}', "unknown message type 'jump'"),
        ('{"keys": ["W"]}', "unknown message type None"),
        ('{"type": "input", "seq": 1, "keys": ["Q"]}', "unknown key 'Q'"),
        ('{"type": "input", "seq": 1, "keys": "W"}', "'keys' must be a list"),
        ('{"type": "input", "seq": -1}', "'seq' must be an integer"),
        ('{"type": "input", "seq": 1.5}', "'seq' must be an integer"),
        ('{"type": "input", "seq": true}', "'seq' must be an integer"),
        ('{"type": "input", "seq": 1, "mouse": [1]}', "'mouse' must be [dx, dy]"),
        ('{"type": "input", "seq": 1, "mouse": [1e9, 0]}', "within"),
        ('{"type": "input", "seq": 1, "mouse": [NaN, 0]}', "finite"),
        ('{"type": "input", "seq": 1, "mouse": ["1", 0]}', "finite numbers"),
        ('{"type": "input", "seq": 1, "fire": true}', "unknown field(s) ['fire']"),
        ('{"type": "reset", "start": "spawn"}', "'start' must be an integer"),
        ('{"type": "record", "on": 1}', "'on' must be true or false"),
        ("[" * 100_000, "too large"),
        ('{"type": "input", "seq": 1, "pad": "' + "x" * MAX_MESSAGE + '"}', "too large"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(text, says):
    with pytest.raises(ValueError, match=None) as err:
        parse_message(text)
    assert says in str(err.value)


def test_binary_and_deeply_nested_messages_are_refused():
    with pytest.raises(ValueError, match="binary"):
        parse_message(b'{"type": "input"}')
    with pytest.raises(ValueError, match="not valid JSON|JSON object"):
        parse_message("[" * 2000 + "]" * 2000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["input", "reset", "record", "other"])},
    optional={"seq": json_values, "keys": json_values, "mouse": json_values,
              "start": json_values, "on": json_values, "x": json_values},
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.one_of(fields, json_values))
def test_fuzzed_messages_parse_or_fail_with_value_error(obj):
    try:
        text = json.dumps(obj, allow_nan=True)
    except (ValueError, OverflowError):
        return
    try:
        parsed = parse_message(text)
    except ValueError as err:
        assert str(err)
        return
    assert isinstance(parsed, Input | Reset | Record)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_text_never_escapes_value_error(text):
    with contextlib.suppress(ValueError):
        parse_message(text)


def test_frame_messages_round_trip():
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    thumbs = [g.integers(0, 256, (3, 4, 3), dtype=np.uint8) for _ in range(2)]
    header, back, back_thumbs = unpack_frames(pack_frames({"segment": 7}, frames, thumbs))
    assert header["segment"] == 7 and header["shape"] == [4, 6, 8, 3]
    assert np.array_equal(back, frames)
    assert all(np.array_equal(a, b) for a, b in zip(back_thumbs, thumbs, strict=True))
