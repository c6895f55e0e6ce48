"""Container integrity checks that decoders miss: Ogg page CRCs, WAV lengths,
FLAC frame CRCs and ffmpeg decode errors.

Facts measured on this project's data (issue 12): libsndfile decodes an Ogg
file with flipped bytes or a missing tail without complaint, so every Ogg page
CRC and the end-of-stream flag are checked here; a truncated WAV shows only as
a ``data`` chunk shorter than its header declares; FLAC frame CRCs catch
damage, which ffmpeg reports only with ``-err_detect crccheck`` and, like every
ffmpeg decode error, only on stderr (its exit status stays 0).

Every function returns a list of :class:`Finding` (empty when intact) and never
raises on hostile bytes.

Sources: RFC 3533 (Ogg encapsulation: page layout, CRC-32 polynomial
0x04C11DB7, unreflected, initial value 0); Microsoft RIFF/WAVE; FLAC format
specification (frame CRC-16); ffmpeg ``-err_detect``.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

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
