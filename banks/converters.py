"""Uploaded files to text: text, markdown, HTML, PDF and DOCX.

The converter is chosen by content type, falling back to the file name's
extension and then to the file's first bytes (a client that says
`application/octet-stream` still gets its PDF read). Errors say what is wrong
in words a user understands and are permanent: a retry cannot fix a file.
"""

from __future__ import annotations

import io
import mimetypes
import zipfile
from collections.abc import Callable

from operations.handlers import PermanentError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"


class ConversionError(PermanentError):
    pass


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConversionError(f"not valid UTF-8 {what}") from None


def text_from_plain(data: bytes) -> str:
    return _decode(data, "text")


def text_from_markdown(data: bytes) -> str:
    import markdown

    return text_from_html(markdown.markdown(_decode(data, "markdown")).encode())


def text_from_html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data, "HTML"), "html.parser")
    for hidden in soup(["script", "style", "noscript", "template", "head"]):
        hidden.decompose()
    # Blocks end lines; inline elements (<b>, <a>, …) stay within theirs.
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all(_BLOCKS):
        block.append("\n")
    lines = (" ".join(line.split()) for line in soup.get_text("").splitlines())
    return "\n".join(line for line in lines if line)


_BLOCKS = [
    "p",
    "div",
    "section",
    "article",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "title",
    "td",
    "th",
    "dt",
    "dd",
]


def text_from_pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ConversionError("the PDF is encrypted; upload an unprotected copy")
        return "\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except ConversionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(f"not a valid PDF ({exc})") from None


def text_from_docx(data: bytes) -> str:
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ConversionError(f"not a valid DOCX file ({exc})") from None
    return "\n".join(p.text for p in document.paragraphs if p.text.strip())


CONVERTERS: dict[str, Callable[[bytes], str]] = {
    TEXT: text_from_plain,
    MARKDOWN: text_from_markdown,
    "text/x-markdown": text_from_markdown,
    HTML: text_from_html,
    "application/xhtml+xml": text_from_html,
    PDF: text_from_pdf,
    DOCX: text_from_docx,
}
_EXTENSIONS = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".htm": HTML,
    ".html": HTML,
    ".pdf": PDF,
    ".docx": DOCX,
}
_GENERIC = {"", "application/octet-stream", "binary/octet-stream"}


def detect_type(content_type: str, filename: str, data: bytes) -> str:
    declared = content_type.split(";")[0].strip().lower()
    if declared not in _GENERIC:
        return declared
    for extension, kind in _EXTENSIONS.items():
        if filename.lower().endswith(extension):
            return kind
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        return DOCX
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or declared or "application/octet-stream"


def convert(*, data: bytes, content_type: str, filename: str) -> str:
    """The file's text. Raises ConversionError for an unsupported type, an
    unreadable file, or one with no text."""
    kind = detect_type(content_type, filename, data)
    converter = CONVERTERS.get(kind)
    if converter is None:
        supported = "text, markdown, HTML, PDF, DOCX"
        raise ConversionError(f"unsupported type {kind}; supported: {supported}")
    text = converter(data).strip()
    if not text:
        raise ConversionError(f"{filename or 'the file'} contains no text")
    return text
