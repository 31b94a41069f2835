from quatrix.detokenize import IncrementalDecoder


class Bytes:
    """Token i is byte i: a multi-byte character spans tokens, as in byte-level BPE."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_multi_byte_characters_wait_for_their_last_byte():
    decoder = IncrementalDecoder(Bytes())
    pieces = [decoder.push(b) for b in "a€b".encode()]
    assert pieces == ["a", "", "", "€", "b"]
    assert decoder.flush() == "" and decoder.text() == "a€b"


def test_flush_hands_out_an_unfinished_tail_and_hidden_tokens_never_show():
    decoder = IncrementalDecoder(Bytes(), hidden={ord("#")})
    assert decoder.push(ord("#")) == "" and decoder.push(ord("x")) == "x"
    decoder.push("€".encode()[0])
    assert decoder.flush() == "\ufffd"  # the stream ended inside a character: shown as the decoder shows it
    assert decoder.tokens[0] == ord("#")  # counted, not shown


def test_take_never_hands_out_text_twice():
    decoder = IncrementalDecoder(Bytes())
    assert decoder.take("hello", 3) == "hel" and decoder.take("hello", 2) == "" and decoder.take("hello") == "lo"
