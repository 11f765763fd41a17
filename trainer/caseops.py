"""CaseOps: a reversible case transform in front of the tokenizer, and the byte sidecar that keeps bpb exact.

The idea (PR #1729, used by #1736 and the frontier record #1855): lower-case the text and write its
capitalisation as marker symbols, so that "the", "The" and "THE" share one set of pieces and the tokenizer
spends its vocabulary on content. The markers become SentencePiece user-defined symbols (always one piece
each). Written from the records' description; the code is this project's own.

Markers (private-use code points U+E001..U+E004, the ones the records' CaseOps tokenizers reserve, so that
their published FineWeb tokenizer is recognised as a CaseOps one):

  TITLE    U+E001  the next character is upper case (it starts a word)
  ALLCAPS  U+E002  every following character that has a one-character upper case is upper case, up to the
                   first one that has none ("NASA" -> ALLCAPS "nasa"); the encoder only uses it when the
                   character after the run has no upper case, so the run's end is never ambiguous
  CAPNEXT  U+E003  the next character is upper case (inside a word: "iPhone", "McDonald")
  ESC      U+E004  the next character is literal (a marker character that was in the input)

Lossless by construction: a character is lowered only when lower() gives one character whose upper() is the
character again; anything else ('İ', 'ẞ', the Kelvin sign, titlecase digraphs, 'ß' ...) stays as it is.
decode(encode(s)) == s for every string s (the tests run it on hostile text).

Bits per byte must count the ORIGINAL text: the pieces spell the transformed text (markers, lower case), so
the challenge's piece-length table would count the wrong bytes. The byte sidecar carries the count instead:

  fineweb_val_bytes_%06d.bin beside fineweb_val_%06d.bin, in the shard format (256 little-endian int32
  header words: [0]=20240520, [1]=1, [2]=count, the rest 0; then count little-endian uint16), one entry per
  token of the paired shard: the UTF-8 bytes of the original text that token stands for (0 for BOS and for
  the markers). Per document the entries sum to the original text's UTF-8 length. The same layout as the
  records' sidecars, so their published FineWeb ones read the same way.

Standalone (numpy only; sentencepiece for `token_byte_counts`), beside prepare_data.py and local_corpus.py.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)

# SentencePiece settings for a CaseOps tokenizer (on top of the challenge's): the markers are single pieces,
# and nothing is normalised or dropped, so the token stream spells the transformed text exactly and every
# original byte the sidecar credits is one the model had to predict (NFKC or collapsed whitespace would
# credit bytes the tokens no longer carry).
SP_CASEOPS_SETTINGS: dict[str, object] = {
    "user_defined_symbols": list(MARKERS),
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    # kept whitespace runs (indentation) as one piece each, not one token per space
    "allow_whitespace_only_pieces": True,
}

_MARKER_RE = re.compile("[\ue001-\ue004]")
# a whole run of letters holding at least one that is not a-z: the only places the encoder has work to do.
# Anchored at the run's start (the lookbehind): unanchored, a long all-lower-case run is retried from every
# position inside it, quadratic (12 s for 20,000 letters).
_WORD_RE = re.compile(r"(?<![^\W\d_])[^\W\d_]*?[^\W\d_a-z][^\W\d_]*")


class CaseOpsError(ValueError):
    """A transformed string that no encode() could have produced (a marker with nothing valid after it)."""


@cache
def lowerable(c: str) -> bool:
    """An upper-case character that marker + c.lower() gives back exactly."""
    lo = c.lower()
    return lo != c and len(lo) == 1 and lo.upper() == c


@cache
def raisable(c: str) -> bool:
    """A character the decoder may upper-case: one character whose upper() lowers back to it."""
    up = c.upper()
    return up != c and len(up) == 1 and up.lower() == c


def _lower(run: str) -> str:
    # per character: str.lower() on a run applies Greek final-sigma context ('ΟΔΟΣ' -> 'οδος'), whose upper
    # case is not the original
    return "".join(ch.lower() for ch in run)


def _encode_word(word: str, after: str) -> str:
    out, i, n = [], 0, len(word)
    while i < n:
        if not lowerable(word[i]):
            out.append(word[i])
            i += 1
            continue
        j = i
        while j < n and lowerable(word[j]):
            j += 1
        nxt = word[j] if j < n else after
        if j - i >= 2 and not raisable(nxt):
            out.append(ALLCAPS + _lower(word[i:j]))
        elif j - i >= 3:  # "HTTPs": ALLCAPS "htt", then CAPNEXT "p", so the run ends before the "s"
            out.append(ALLCAPS + _lower(word[i : j - 1]) + CAPNEXT + word[j - 1].lower())
        else:
            out.extend((TITLE if k == 0 else CAPNEXT) + word[k].lower() for k in range(i, j))
        i = j
    return "".join(out)


def encode(text: str) -> str:
    """The transformed text: lower case plus markers; decode() gives `text` back exactly."""
    if _MARKER_RE.search(text):
        text = _MARKER_RE.sub(lambda m: ESC + m.group(), text)
    return _WORD_RE.sub(lambda m: _encode_word(m.group(), text[m.end() : m.end() + 1]), text)


def decode_with_weights(t: str) -> tuple[str, np.ndarray]:
    """(original text, weights): weights[k] is what the k-th UTF-8 byte of `t` contributes to the original's
    UTF-8 length (markers 0; a lowered character's original length on its first byte; 1 elsewhere), so
    weights.sum() == len(original.encode()). Raises CaseOpsError on a string encode() cannot produce."""
    data = t.encode("utf-8")
    w = np.ones(len(data), dtype=np.int64)
    out: list[str] = []
    pos, bpos = 0, 0  # character and byte offsets in t

    def raised(i: int, b: int) -> int:  # t[i] upper-cased into out; returns its UTF-8 length in t
        c = t[i]
        n = len(c.encode("utf-8"))
        w[b : b + n] = 0
        w[b] = len(c.upper().encode("utf-8"))
        out.append(c.upper())
        return n

    while (m := _MARKER_RE.search(t, pos)) is not None:
        i = m.start()
        out.append(t[pos:i])
        bpos += len(t[pos:i].encode("utf-8"))
        w[bpos : bpos + 3] = 0  # every marker is 3 UTF-8 bytes
        bpos += 3
        mark, i = t[i], i + 1
        if mark == ESC:
            if i >= len(t):
                raise CaseOpsError(f"escape marker at the end of the text (offset {i - 1})")
            out.append(t[i])
            bpos += len(t[i].encode("utf-8"))
            i += 1
        elif mark == ALLCAPS:
            start = i
            while i < len(t) and raisable(t[i]):
                bpos += raised(i, bpos)
                i += 1
            if i - start < 1:
                raise CaseOpsError(f"all-caps marker with no letter after it (offset {start - 1})")
        else:
            if i >= len(t) or not raisable(t[i]):
                raise CaseOpsError(f"capital marker not followed by a lower-case letter (offset {i - 1})")
            bpos += raised(i, bpos)
            i += 1
        pos = i
    out.append(t[pos:])
    return "".join(out), w


def decode(t: str) -> str:
    return decode_with_weights(t)[0]


def is_caseops_tokenizer(sp) -> bool:
    """A tokenizer that holds any marker as a piece was trained on transformed text: its val data must be
    scored through a byte sidecar."""
    return any(sp.piece_to_id(m) != sp.unk_id() for m in MARKERS)


def token_byte_counts(sp, transformed: str) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, original UTF-8 bytes per token) of one transformed document, without BOS.

    Each token owns the input bytes from its own start offset to the next token's (SentencePiece reports
    byte offsets into the input), the first from 0 and the last to the end, so the counts partition the
    document and sum exactly to its original UTF-8 length whatever the tokenizer normalises."""
    proto = sp.encode(transformed, out_type="serialized_proto")
    from sentencepiece import sentencepiece_pb2

    pieces = sentencepiece_pb2.SentencePieceText.FromString(proto).pieces
    _, w = decode_with_weights(transformed)
    ids = np.fromiter((p.id for p in pieces), dtype=np.int64, count=len(pieces))
    cuts = np.fromiter((p.begin for p in pieces), dtype=np.int64, count=len(pieces))
    if cuts.size:
        cuts[0] = 0
    cuts = np.maximum.accumulate(np.append(cuts, w.size))
    cum = np.concatenate([[0], np.cumsum(w)])
    return ids, cum[cuts[1:]] - cum[cuts[:-1]]
