"""Quoting untrusted text into a prompt: the one way retrieved chunks, documents, tool results and the user's
question are placed in one.

Each quoted text sits in its own `<tag …>` block, and every tag that any of our prompts uses is defused inside it
(its `<` written `&lt;`), whatever the case, spacing or lookalike bracket, so quoted data can neither close its own
block nor open one that poses as another part of the prompt. The system prompts say that these blocks are data,
never instructions.
"""

from __future__ import annotations

import re
from html import escape

#: every tag our prompts quote text in; one list, so text quoted under one tag cannot fake another prompt's tag
TAGS = frozenset({"query", "question", "passage", "claim", "quote", "answer", "observation"})

# Whitespace and invisible format characters a model would read past between "<", "/" and a tag's name.
_GAP = r"[\s\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]*"
# "<" and the lookalike brackets a model may read as one: fullwidth, small form, mathematical and CJK angle brackets.
_OPEN = "<\uff1c\ufe64\u27e8\u3008"
_TAG_LIKE = re.compile(rf"[{_OPEN}]({_GAP}[/\uff0f\u2044\u2215]?{_GAP}(?:{'|'.join(sorted(TAGS))})\b)", re.IGNORECASE)


def quote(tag: str, text: str, **attrs: str | int) -> str:
    """Return `text` as the untrusted data block `<tag …>`…`</tag>`, with every tag of ours inside it defused."""
    if tag not in TAGS:
        raise ValueError(f"unknown quoting tag {tag!r}: add it to guard.quote.TAGS so every prompt defuses it")
    # Attribute values are ours (ids, passage numbers) but are escaped anyway, so none can end the opening tag.
    attributes = "".join(f' {k}="{escape(str(v), quote=True)}"' for k, v in attrs.items())
    body = _TAG_LIKE.sub(r"&lt;\1", text)
    return f"<{tag}{attributes}>\n{body}\n</{tag}>"
