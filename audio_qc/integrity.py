"""Container integrity checks that decoders miss: Ogg page CRCs, WAV lengths,
FLAC frame CRCs and ffmpeg decode errors.

Facts measured on this project's data (issue 12): libsndfile decodes an Ogg
file with flipped bytes or a missing tail without complaint, so every Ogg page
CRC and the end-of-stream flag are checked here; a truncated WAV shows only as
a ``data`` chunk shorter than its header declares; FLAC frame CRCs catch
damage, which ffmpeg reports only with ``-err_detect crccheck`` and, like every
ffmpeg decode error, only on stderr (its exit status stays 0). FLAC frames are
therefore walked here (:func:`check_flac`: every frame header's CRC-8 and every
frame's CRC-16, frame numbering, the STREAMINFO sample count) in a compiled
loop, instead of a second full decode by ffmpeg; MP3 still goes through ffmpeg.

Every function returns a list of :class:`Finding` (empty when intact) and never
raises on hostile bytes. ``data`` may be ``bytes`` or a read-only ``mmap`` of
the file (what :func:`audio_qc.analyze.analyze_path` passes).

Sources: RFC 3533 (Ogg encapsulation: page layout, CRC-32 polynomial
0x04C11DB7, unreflected, initial value 0); Microsoft RIFF/WAVE; FLAC format
specification (RFC 9639: metadata blocks, frame header and its CRC-8 with
polynomial 0x07, frame footer CRC-16 with polynomial 0x8005, both unreflected
with initial value 0); ffmpeg ``-err_detect``.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np

#: Bit-reversal of every byte value (turns zlib's reflected CRC into Ogg's).
_REV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


@dataclass(frozen=True)
class Finding:
    """One integrity finding: a defect code (``decode_error`` or
    ``truncated``), a human-readable detail, and a byte offset if known."""

    code: str
    detail: str
    offset: int | None = None


def sniff_format(head: bytes) -> str:
    """Container from the first bytes: ``ogg``, ``flac``, ``wav``, ``mp3``,
    ``unknown``.

    Args:
        head: at least the first 12 bytes of the file (fewer gives ``unknown``).
    """
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return "unknown"


def _bitrev32(v: int) -> int:
    return int(f"{v:032b}"[::-1], 2)


def ogg_crc(page: bytes) -> int:
    """CRC-32 of an Ogg page with its checksum field taken as zero (RFC 3533).

    Computed with zlib (reflected CRC-32) on bit-reversed bytes, which equals
    the unreflected polynomial 0x04C11DB7 with initial value 0 and no final
    XOR, at C speed.
    """
    rev = page.translate(_REV)
    crc = zlib.crc32(rev[:22], 0xFFFFFFFF)
    crc = zlib.crc32(b"\x00\x00\x00\x00", crc)
    crc = zlib.crc32(rev[26:], crc)
    return _bitrev32(crc ^ 0xFFFFFFFF)


def check_ogg(data: bytes) -> tuple[list[Finding], dict]:
    """Walk every Ogg page: capture pattern, CRC, sequence numbers, EOS flag.

    Args:
        data: the whole file.

    Returns:
        ``(findings, info)``; ``info`` holds ``pages``, ``serials`` and
        ``last_granule`` (per serial) for the report's detail texts.
        A file ending inside a page, or whose last page lacks the
        end-of-stream flag, is ``truncated``; a CRC mismatch, a sequence gap,
        or bytes between pages that are not a page is ``decode_error``.
    """
    findings: list[Finding] = []
    pos, n = 0, len(data)
    pages = 0
    seq: dict[int, int] = {}
    eos: dict[int, bool] = {}
    granule: dict[int, int] = {}
    bad_crc = 0
    first_bad: int | None = None
    while pos < n:
        if data[pos : pos + 4] != b"OggS":
            nxt = data.find(b"OggS", pos + 1)
            if nxt < 0:
                if n - pos < 27 and pos > 0:
                    findings.append(Finding("truncated", f"file ends in a partial Ogg page header at byte {pos}", pos))
                else:
                    findings.append(Finding("decode_error", f"{n - pos} bytes of non-Ogg data at byte {pos}", pos))
                break
            findings.append(Finding("decode_error", f"lost Ogg sync: {nxt - pos} stray bytes at byte {pos}", pos))
            pos = nxt
            continue
        if n - pos < 27:
            findings.append(Finding("truncated", f"file ends in a partial Ogg page header at byte {pos}", pos))
            break
        version, htype, gran, serial, pseq, _crc, nseg = struct.unpack_from("<BBqIIIB", data, pos + 4)
        if n - pos < 27 + nseg:
            findings.append(Finding("truncated", f"file ends in an Ogg segment table at byte {pos}", pos))
            break
        body = sum(data[pos + 27 : pos + 27 + nseg])
        end = pos + 27 + nseg + body
        if end > n:
            findings.append(
                Finding("truncated", f"last Ogg page (seq {pseq}) declares {end - pos} bytes, {n - pos} present", pos)
            )
            break
        if version != 0 or ogg_crc(data[pos:end]) != _crc:
            bad_crc += 1
            if first_bad is None:
                first_bad = pos
        if serial in seq and pseq != seq[serial] + 1:
            findings.append(Finding("decode_error", f"Ogg page sequence jumps {seq[serial]} -> {pseq} (serial {serial:#x})", pos))
        seq[serial] = pseq
        eos[serial] = bool(htype & 0x04)
        if gran >= 0:
            granule[serial] = gran
        pages += 1
        pos = end
    if bad_crc:
        findings.append(Finding("decode_error", f"{bad_crc} Ogg page(s) fail their CRC, first at byte {first_bad}", first_bad))
    if pages == 0:
        findings.append(Finding("decode_error", "no Ogg page found", 0))
    elif not any(f.code == "truncated" for f in findings):
        missing = [s for s, e in eos.items() if not e]
        if missing:
            findings.append(Finding("truncated", "last Ogg page lacks the end-of-stream flag", n))
    return findings, {"pages": pages, "serials": len(seq), "last_granule": granule}


def check_wav(data: bytes) -> list[Finding]:
    """RIFF/WAVE chunk walk: a ``data`` chunk declaring more bytes than the
    file holds is ``truncated``; a malformed chunk list is ``decode_error``.

    Args:
        data: the whole file (RF64 files are only checked for a ``data`` chunk).
    """
    n = len(data)
    if n < 12:
        return [Finding("truncated", f"WAV file of {n} bytes has no complete header", 0)]
    riff_size = struct.unpack_from("<I", data, 4)[0]
    pos = 12
    found_fmt = found_data = False
    out: list[Finding] = []
    while pos + 8 <= n:
        cid = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        if cid == b"fmt ":
            found_fmt = True
            if size < 16 or pos + 8 + size > n:
                out.append(Finding("decode_error", f"WAV fmt chunk of {size} bytes is malformed", pos))
        if cid == b"data":
            found_data = True
            avail = n - pos - 8
            if data[:4] == b"RIFF" and size > avail:
                out.append(
                    Finding("truncated", f"WAV data chunk declares {size} bytes, {avail} present", pos)
                )
            break
        if not (cid.isascii() and all(32 <= b < 127 for b in cid)):
            out.append(Finding("decode_error", f"WAV chunk id {cid!r} at byte {pos} is not text", pos))
            break
        pos += 8 + size + (size & 1)
    if not found_fmt and not out:
        out.append(Finding("decode_error", "WAV file has no fmt chunk", 12))
    if not found_data and not out:
        out.append(Finding("truncated", "WAV file has no data chunk", n))
    if data[:4] == b"RIFF" and not out and riff_size + 8 > n and not found_data:
        out.append(Finding("truncated", f"RIFF size {riff_size + 8} > file size {n}", n))
    return out


def ffmpeg_errors(path: Path, timeout_s: float, crc: bool = True) -> list[str]:
    """Decode with ffmpeg into a null sink and return its error lines.

    ffmpeg exits 0 after decode errors, so stderr is what tells. With
    ``crc=True`` it runs with ``-err_detect crccheck+bitstream+buffer`` (FLAC
    frame CRCs, MP3 CRCs where present).

    Raises:
        subprocess.TimeoutExpired: when ffmpeg runs past ``timeout_s``.
        FileNotFoundError: when ffmpeg is not installed.
    """
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error"]
    if crc:
        cmd += ["-err_detect", "crccheck+bitstream+buffer"]
    cmd += ["-i", str(path), "-map", "0:a:0", "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if proc.returncode != 0 and not lines:
        lines = [f"ffmpeg exited with status {proc.returncode}"]
    return lines


def check_with_ffmpeg(path: Path, timeout_s: float, fmt: str) -> list[Finding]:
    """Findings from ffmpeg's stderr (FLAC, MP3 and formats libsndfile lacks).

    A FLAC stream that ends early is ``truncated``; any other error line is
    ``decode_error`` with the first line quoted (ffmpeg wording, untranslated).
    """
    lines = ffmpeg_errors(path, timeout_s)
    if not lines:
        return []
    text = " | ".join(lines[:3])[:400]
    low = " ".join(lines).lower()
    if any(k in low for k in ("end of file", "truncat", "invalid data found when processing input")) and fmt in ("flac", "mp3"):
        if "crc" not in low:
            return [Finding("truncated", f"ffmpeg: {text}")]
    return [Finding("decode_error", f"ffmpeg reports {len(lines)} error line(s): {text}")]


# --------------------------------------------------------------------------- FLAC


def _crc8_table() -> np.ndarray:
    t = np.zeros(256, dtype=np.uint8)
    for b in range(256):
        c = b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        t[b] = c
    return t


def _crc16_tables() -> np.ndarray:
    """Slicing-by-8 tables of the FLAC CRC-16: ``T[k][b]`` is the CRC register
    after byte ``b`` followed by ``k`` zero bytes (register starting at 0)."""
    t = np.zeros((8, 256), dtype=np.uint16)
    for b in range(256):
        c = b << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        t[0, b] = c
    for k in range(1, 8):
        for b in range(256):
            prev = int(t[k - 1, b])
            t[k, b] = ((prev << 8) & 0xFFFF) ^ int(t[0, prev >> 8])
    return t


_CRC8 = _crc8_table()
_CRC16 = _crc16_tables()
_FLAC_RATES = np.array([0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000,
                        -1, -1, -1, -2], dtype=np.int64)
_FLAC_BPS = np.array([0, 8, 12, -2, 16, 20, 24, 32], dtype=np.int64)


@nb.njit(nogil=True)
def _crc16(d, start, stop, crc, t):  # pragma: no cover - compiled
    """FLAC CRC-16 register after ``d[start:stop]``, from register ``crc``
    (slicing by 8: eight table look-ups per 8 bytes instead of a serial chain)."""
    i = start
    c = np.int64(crc)
    while i + 8 <= stop:
        c = (np.int64(t[7, (c >> 8) ^ np.int64(d[i])]) ^ np.int64(t[6, (c & 0xFF) ^ np.int64(d[i + 1])])
             ^ np.int64(t[5, d[i + 2]]) ^ np.int64(t[4, d[i + 3]]) ^ np.int64(t[3, d[i + 4]])
             ^ np.int64(t[2, d[i + 5]]) ^ np.int64(t[1, d[i + 6]]) ^ np.int64(t[0, d[i + 7]]))
        i += 8
    while i < stop:
        c = ((c << 8) & 0xFFFF) ^ np.int64(t[0, (c >> 8) ^ np.int64(d[i])])
        i += 1
    return c


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)


@nb.njit(nogil=True)
def _crc_to_sync(d, w64, cstart, sstart, stop, crc, t):  # pragma: no cover - compiled
    """Advance the CRC-16 register from ``cstart`` up to the first frame sync
    code at or after ``sstart`` (d[q] == 0xFF, d[q+1] in 0xF8/0xF9, q + 1 < stop).

    One pass does both jobs: 8-byte words go through the slicing-by-8 tables
    unless they hold a 0xFF byte (found with the has-zero-byte trick on the
    inverted word), which are then looked at byte by byte.

    Returns:
        ``(q, crc)``: the sync position (``stop`` if none) and the register
        over ``d[cstart:q]``.
    """
    i = cstart
    c = np.int64(crc)
    # bytewise up to the word boundary
    while i < stop and (i & 7) != 0:
        if i >= sstart and i + 1 < stop and d[i] == 0xFF and (d[i + 1] & 0xFE) == 0xF8:
            return i, c
        c = ((c << 8) & 0xFFFF) ^ np.int64(t[0, (c >> 8) ^ np.int64(d[i])])
        i += 1
    while i + 8 < stop:  # the byte after the word is inside too
        w = w64[i >> 3]
        x = ~w
        if ((x - _ONES) & ~x & _HIGHS) != 0 and i + 8 > sstart:  # a 0xFF byte: maybe a sync code
            for k in range(8):
                q = i + k
                if q >= sstart and d[q] == 0xFF and (d[q + 1] & 0xFE) == 0xF8:
                    return q, c
                c = ((c << 8) & 0xFFFF) ^ np.int64(t[0, (c >> 8) ^ np.int64(d[q])])
            i += 8
            continue
        c = (np.int64(t[7, (c >> 8) ^ np.int64(d[i])]) ^ np.int64(t[6, (c & 0xFF) ^ np.int64(d[i + 1])])
             ^ np.int64(t[5, d[i + 2]]) ^ np.int64(t[4, d[i + 3]]) ^ np.int64(t[3, d[i + 4]])
             ^ np.int64(t[2, d[i + 5]]) ^ np.int64(t[1, d[i + 6]]) ^ np.int64(t[0, d[i + 7]]))
        i += 8
    while i < stop:
        if i >= sstart and i + 1 < stop and d[i] == 0xFF and (d[i + 1] & 0xFE) == 0xF8:
            return i, c
        c = ((c << 8) & 0xFFFF) ^ np.int64(t[0, (c >> 8) ^ np.int64(d[i])])
        i += 1
    return stop, c


@nb.njit(nogil=True)
def _flac_header(d, pos, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8):  # pragma: no cover
    """Parse the FLAC frame header at ``pos``.

    Returns ``(header_bytes, block_size, number, variable)``; header_bytes is
    0 when there is no valid header there (sync, reserved bits, UTF-8 coded
    number, CRC-8, or a field that contradicts STREAMINFO).
    """
    if pos + 6 > n or d[pos] != 0xFF or (d[pos + 1] & 0xFE) != 0xF8:
        return 0, 0, 0, False
    variable = (d[pos + 1] & 1) == 1
    bs_code = np.int64(d[pos + 2] >> 4)
    sr_code = np.int64(d[pos + 2] & 0x0F)
    ch_code = np.int64(d[pos + 3] >> 4)
    bps_code = np.int64((d[pos + 3] >> 1) & 7)
    if bs_code == 0 or sr_code == 15 or ch_code > 10 or (d[pos + 3] & 1) != 0 or bpss[bps_code] == -2:
        return 0, 0, 0, False
    channels = ch_code + 1 if ch_code < 8 else 2
    if channels != si_ch:
        return 0, 0, 0, False
    bps = bpss[bps_code]
    if bps != 0 and bps != si_bps:
        return 0, 0, 0, False
    p = pos + 4
    b = np.int64(d[p])
    if b < 0x80:
        extra = 0
        num = b
    elif b >= 0xC0 and b < 0xE0:
        extra = 1
        num = b & 0x1F
    elif b >= 0xE0 and b < 0xF0:
        extra = 2
        num = b & 0x0F
    elif b >= 0xF0 and b < 0xF8:
        extra = 3
        num = b & 0x07
    elif b >= 0xF8 and b < 0xFC:
        extra = 4
        num = b & 0x03
    elif b >= 0xFC and b < 0xFE:
        extra = 5
        num = b & 0x01
    elif b == 0xFE and variable:
        extra = 6
        num = 0
    else:
        return 0, 0, 0, False
    if p + 1 + extra + 4 > n:
        return 0, 0, 0, False
    for k in range(extra):
        c = np.int64(d[p + 1 + k])
        if (c & 0xC0) != 0x80:
            return 0, 0, 0, False
        num = (num << 6) | (c & 0x3F)
    p += 1 + extra
    if bs_code == 1:
        bs = 192
    elif bs_code <= 5:
        bs = 576 << (bs_code - 2)
    elif bs_code == 6:
        bs = np.int64(d[p]) + 1
        p += 1
    elif bs_code == 7:
        bs = (np.int64(d[p]) << 8 | np.int64(d[p + 1])) + 1
        p += 2
    else:
        bs = 256 << (bs_code - 8)
    if sr_code == 12:
        rate = np.int64(d[p]) * 1000
        p += 1
    elif sr_code == 13:
        rate = np.int64(d[p]) << 8 | np.int64(d[p + 1])
        p += 2
    elif sr_code == 14:
        rate = (np.int64(d[p]) << 8 | np.int64(d[p + 1])) * 10
        p += 2
    else:
        rate = rates[sr_code]
    if rate != 0 and rate != si_rate:
        return 0, 0, 0, False
    if si_maxbs >= 16 and bs > si_maxbs:
        return 0, 0, 0, False
    if p >= n:
        return 0, 0, 0, False
    c8 = np.int64(0)
    for k in range(pos, p):
        c8 = np.int64(crc8[c8 ^ np.int64(d[k])])
    if c8 != np.int64(d[p]):
        return 0, 0, 0, False
    return p + 1 - pos, bs, num, variable


@nb.njit(nogil=True)
def _next_sync(d, pos, stop):  # pragma: no cover - compiled
    """First q in [pos, stop - 1) with d[q] == 0xFF and d[q+1] in (0xF8, 0xF9), else stop."""
    q = pos
    while q + 1 < stop:
        if d[q] == 0xFF and (d[q + 1] & 0xFE) == 0xF8:
            return q
        q += 1
    return stop


@nb.njit(nogil=True)
def _flac_walk(d, w64, start, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8, crc16, out):  # pragma: no cover
    """Walk the FLAC frames of ``d[start:n]``; counters go to ``out`` (int64):

    0 good frames, 1 frames failing their CRC-16, 2 byte offset of the first
    bad frame (-1), 3 samples in good and bad frames except a bad last frame,
    4 stray bytes outside frames, 5 offset of the first stray byte (-1),
    6 numbering jumps (missing frames), 7 last frame bad (0/1), 8 frames found.

    A frame starting at ``pos`` ends at the first later valid frame header
    (or the end of the file) where the CRC-16 register over the bytes so far
    is 0 (the footer holds the CRC big-endian), searched no further than the
    largest possible frame (verbatim subframes). When none matches, the frame
    is bad and the walk resumes at the next valid header.
    """
    for k in range(out.shape[0]):
        out[k] = 0
    out[2] = -1
    out[5] = -1
    pos = start
    expect = -1
    while pos < n:
        hl, bs, num, variable = _flac_header(d, pos, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8)
        if hl == 0:  # not a frame: skip to the next valid header
            q = pos + 1
            while q < n:
                q = _next_sync(d, q, n)
                if q >= n:
                    break
                if _flac_header(d, q, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8)[0] > 0:
                    break
                q += 1
            q = min(q, n)
            out[4] += q - pos
            if out[5] < 0:
                out[5] = pos
            pos = q
            continue
        out[8] += 1
        if expect >= 0 and num != expect:
            out[6] += 1
        expect = num + (bs if variable else 1)
        limit = min(n, pos + hl + si_ch * ((bs * (si_bps + 1) + 7) // 8 + 8) + 2 + 64)
        crc = np.int64(0)
        cpos = pos
        q = pos + hl
        end = -1
        first_hdr = -1
        while True:
            q, crc = _crc_to_sync(d, w64, cpos, q, limit, crc, crc16)
            cpos = q
            if q >= limit:
                if limit == n and crc == 0 and n - pos > hl + 2:
                    end = n
                break
            if _flac_header(d, q, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8)[0] > 0:
                if first_hdr < 0:
                    first_hdr = q
                if crc == 0:
                    end = q
                    break
            q += 1
        if end >= 0:
            out[0] += 1
            out[3] += bs
            out[7] = 0
            # zero bytes keep a zero CRC register zero: zeros inserted after a
            # frame would pass as part of it, so find where the register first hit 0
            z = 0
            while end - z - 1 >= pos + hl and d[end - z - 1] == 0:
                z += 1
            if z >= 3:
                c2 = _crc16(d, pos, end - z, 0, crc16)
                e = end - z
                while c2 != 0 and e < end:
                    c2 = _crc16(d, e, e + 1, c2, crc16)
                    e += 1
                # a frame whose CRC is 0x0000 after a zero byte reaches 0 two
                # bytes early by itself: only 3 or more zeros are stray
                if e <= end - 3 and e - pos >= hl + 2:
                    out[4] += end - e
                    if out[5] < 0:
                        out[5] = e
            pos = end
            continue
        out[1] += 1
        if out[2] < 0:
            out[2] = pos
        if first_hdr < 0:  # no header within the frame's reach: look further
            q = _next_sync(d, limit, n)
            while q < n:
                if _flac_header(d, q, n, si_rate, si_bps, si_ch, si_maxbs, rates, bpss, crc8)[0] > 0:
                    break
                q = _next_sync(d, q + 1, n)
            first_hdr = q
        if first_hdr >= n:
            out[7] = 1  # the bad frame runs to the end of the file
            break
        out[3] += bs
        pos = first_hdr


def check_flac(data: bytes) -> list[Finding]:
    """Walk a FLAC file: metadata blocks, every frame's header CRC-8 and
    CRC-16, frame numbering, and the STREAMINFO sample count.

    Catches what ``ffmpeg -err_detect crccheck`` catches (any damaged frame
    fails its CRC-16), plus a file cut at a frame boundary (fewer samples than
    STREAMINFO declares), without decoding. The STREAMINFO MD5 of the decoded
    audio is not checked (ffmpeg does not check it either); frame CRCs cover
    every coded byte.

    Args:
        data: the whole file (starting with ``fLaC``).

    Returns:
        Findings: ``truncated`` when the file ends inside a metadata block or
        a frame, or its frames hold fewer samples than STREAMINFO declares;
        ``decode_error`` for a missing or impossible STREAMINFO, frames failing
        their CRC, stray bytes between frames, or missing frames.

    Source: RFC 9639 (FLAC), sections 8 (metadata), 9 (frames).
    """
    n = len(data)
    if n < 8 or data[:4] != b"fLaC":
        return [Finding("decode_error", "no FLAC stream marker", 0)]
    pos = 4
    si = None
    first = True
    while True:
        if pos + 4 > n:
            return [Finding("truncated", f"file ends in the FLAC metadata at byte {pos}", pos)]
        hdr = data[pos]
        last, btype = hdr & 0x80, hdr & 0x7F
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if btype == 127 or (first and btype != 0) or (not first and btype == 0):
            return [Finding("decode_error", f"invalid FLAC metadata block type {btype} at byte {pos}", pos)]
        if pos + 4 + length > n:
            return [Finding("truncated", f"FLAC metadata block at byte {pos} declares {length} bytes, "
                                         f"{n - pos - 4} present", pos)]
        if btype == 0:
            if length != 34:
                return [Finding("decode_error", f"FLAC STREAMINFO of {length} bytes (34 expected)", pos)]
            b = data[pos + 4 : pos + 38]
            v = int.from_bytes(b[10:18], "big")
            si = {"min_bs": int.from_bytes(b[0:2], "big"), "max_bs": int.from_bytes(b[2:4], "big"),
                  "rate": v >> 44, "channels": ((v >> 41) & 7) + 1, "bps": ((v >> 36) & 31) + 1,
                  "total": v & ((1 << 36) - 1)}
        first = False
        pos += 4 + length
        if last:
            break
    assert si is not None
    if not (1 <= si["rate"] <= 1_048_575) or si["max_bs"] < 16 or si["min_bs"] < 16 or si["bps"] < 4:
        return [Finding("decode_error", "impossible FLAC STREAMINFO (sample rate {rate} Hz, block sizes "
                                        "{min_bs}-{max_bs}, {bps} bits)".format(**si), 8)]
    end = n
    if n - pos >= 128 and data[n - 128 : n - 125] == b"TAG":  # an ID3v1 tag after the frames
        end = n - 128
    buf = np.frombuffer(data, dtype=np.uint8)
    words = buf[: len(buf) // 8 * 8].view(np.uint64)  # native order; only tested for 0xFF bytes
    out = np.zeros(9, dtype=np.int64)
    _flac_walk(buf, words, pos, end, si["rate"], si["bps"], si["channels"], si["max_bs"], _FLAC_RATES, _FLAC_BPS,
               _CRC8, _CRC16, out)
    good, bad, first_bad, samples, stray, first_stray, jumps, last_bad, found = (int(v) for v in out)
    findings: list[Finding] = []
    if found == 0:
        return [Finding("truncated" if end - pos < 16 else "decode_error",
                        f"no FLAC frame after the metadata (byte {pos})", pos)]
    if si["total"] and samples < si["total"]:
        findings.append(Finding("truncated", f"FLAC frames hold {samples} samples, STREAMINFO declares "
                                             f"{si['total']}", end))
    elif last_bad and bad == 1 and not si["total"]:
        findings.append(Finding("truncated", "file ends inside a FLAC frame", end))
    n_bad = bad - (1 if last_bad and findings else 0)
    if n_bad > 0:
        findings.append(Finding("decode_error", f"{n_bad} FLAC frame(s) fail their CRC, first at byte {first_bad}",
                                first_bad))
    if stray:
        findings.append(Finding("decode_error", f"{stray} stray bytes outside FLAC frames, first at byte "
                                                f"{first_stray}", first_stray))
    if jumps:
        findings.append(Finding("decode_error", f"FLAC frame numbering jumps {jumps} time(s) (missing frames)", None))
    return findings
