"""Resolution of ``audio.ingested`` URIs to files inside the allowed roots.

A URI is a plain path or a ``file://`` URI. Anything else is rejected, as is
any path that leaves the configured roots, whether by ``..`` or through a
symbolic link (the path is resolved with :func:`os.path.realpath` before the
containment test). The stream dead-letters a rejection as ``uri_rejected``
(CONVENTIONS.md).

Source: RFC 8089 (the ``file`` URI scheme).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit


class UriRejected(ValueError):
    """A URI that names no file inside the allowed roots; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve_uri(uri: str, roots: list[Path]) -> Path:
    """Resolve ``uri`` to a real path inside one of ``roots``.

    Args:
        uri: a plain absolute or relative path, or ``file:///abs/path`` (or
            ``file://localhost/abs/path``); percent-escapes are decoded.
        roots: allowed root folders (resolved here with realpath).

    Returns:
        The resolved absolute :class:`~pathlib.Path` (symlinks followed).

    Raises:
        UriRejected: for an empty URI, a NUL byte, a scheme other than
            ``file``, a remote host, a ``..`` component, a path that resolves
            (possibly through a symlink) outside every root, or no roots.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "a.wav").write_bytes(b"")
    0
    >>> resolve_uri((d / "a.wav").as_uri(), [d]) == (d / "a.wav").resolve()
    True
    >>> resolve_uri("http://x/a.wav", [d])
    Traceback (most recent call last):
    ...
    audio_qc.paths.UriRejected: scheme 'http' is not allowed (only file)
    """
    if not uri:
        raise UriRejected("empty URI")
    if "\x00" in uri:
        raise UriRejected("NUL byte in URI")
    if not roots:
        raise UriRejected("no allowed roots are configured")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UriRejected(f"remote host {parts.netloc!r} in file URI")
        raw = unquote(parts.path)
    elif scheme == "" or (len(scheme) == 1 and uri[1:2] == ":"):
        raw = uri
    else:
        raise UriRejected(f"scheme {scheme!r} is not allowed (only file)")
    if "\x00" in raw:
        raise UriRejected("NUL byte in path")
    if ".." in Path(raw).parts:
        raise UriRejected("'..' in path")
    real = Path(os.path.realpath(raw))
    for root in roots:
        r = Path(os.path.realpath(root))
        if real == r or r in real.parents:
            return real
    raise UriRejected(f"path resolves outside the allowed roots: {real}")
