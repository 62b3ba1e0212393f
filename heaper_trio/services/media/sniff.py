"""What a file is, from its first bytes: the MIME type and the kind of media.

Content wins over the name: a client's file name or declared type is a hint, and a wrong one
must not send a PDF into the image decoder or a JPEG into ffmpeg. Only the signatures below
are recognised; anything else falls back to the name's extension (for display) and is not
thumbnailed. Pure functions, no I/O except reading ``HEAD_BYTES`` of the file.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

HEAD_BYTES = 512

# Image types the Pillow pipeline decodes (see media/images.PILLOW_FORMATS).
PILLOW_MIMES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/x-icon",
        "image/avif",
    }
)

# ISO base media brands (``ftyp``) -> MIME type.
_FTYP = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"hevc": "image/heic-sequence",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3gp6": "video/3gpp",
    b"3g2a": "video/3gpp2",
}

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x1aE\xdf\xa3", "video/x-matroska"),  # EBML; refined to webm below
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"FLV\x01", "video/x-flv"),
    (b"\x00\x00\x01\xba", "video/mpeg"),
    (b"\x00\x00\x01\xb3", "video/mpeg"),
    (b"0&\xb2u\x8ef\xcf\x11", "video/x-ms-asf"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
)


# Types a browser runs (or renders with scripts) as a document of our origin; beyond these,
# every *+xml, XML, XSL(T), *html* and *script* type (javascript, ecmascript, jscript, ...).
_ACTIVE = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/xslt+xml",
        "application/xsl+xml",
        "text/javascript",
        "application/javascript",
        "application/ecmascript",
        "text/ecmascript",
        "application/x-javascript",
        "text/x-javascript",
        "application/x-ecmascript",
        "text/x-ecmascript",
        "text/jscript",
        "text/livescript",
        "application/x-shockwave-flash",
        "application/futuresplash",
        "text/x-component",
        "application/hta",
        "message/rfc822",
        "multipart/related",
        "application/x-mimearchive",
        "multipart/x-mixed-replace",
    }
)


def runs_in_browser(mime: str) -> bool:
    """Whether a browser opening a file of this type could run something in it: such files
    are only ever sent as attachments (and every file answer is sandboxed besides)."""
    base = mime.split(";", 1)[0].strip().lower()
    if base in _ACTIVE:
        return True
    _, _, sub = base.partition("/")
    return (
        sub.endswith("+xml")
        or sub in ("xml", "xsl", "xslt", "x-xslt")
        or "html" in sub
        or "script" in sub
    )


def sniff_bytes(head: bytes) -> str | None:
    """The MIME type the signature in ``head`` declares, or None when it is not one we know."""
    for prefix, mime in _PREFIXES:
        if head.startswith(prefix):
            if mime == "video/x-matroska" and b"webm" in head[:64]:
                return "video/webm"
            return mime
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "image/webp", b"AVI ": "video/x-msvideo", b"WAVE": "audio/wav"}.get(
            head[8:12]
        )
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _FTYP.get(head[8:12], "video/mp4")
    if head.startswith(b"OggS"):
        return "video/ogg" if b"theora" in head[:64] else "audio/ogg"
    if head.startswith(b"BM") and len(head) >= 26 and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "image/bmp"  # "BM" alone is too weak; also require a known DIB header size
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "audio/mpeg"  # MPEG audio frame sync without an ID3 tag
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "video/mp2t"
    text = head.lstrip()[:256].lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "image/svg+xml"
    return None


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def guess_from_name(name: str) -> str | None:
    if not name:
        return None
    return mimetypes.guess_type(name, strict=False)[0]


def kind_of(mime: str | None) -> str:
    """``image``, ``video``, ``audio`` or ``other``, from the MIME type's top level."""
    top = (mime or "").partition("/")[0]
    return top if top in ("image", "video", "audio") else "other"


def pillow_decodes(mime: str | None) -> bool:
    return mime in PILLOW_MIMES
