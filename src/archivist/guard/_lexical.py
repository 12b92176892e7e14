"""The lexical half of the injection detector's features: markers of text aimed at the model that reads it, and
hashed word n-grams. Shared by inference (`guard.injection`) and training (`benchmarks/train_injection_guard.py`),
so both compute exactly the same numbers."""

from __future__ import annotations

import itertools
import math
import re
import zlib

import numpy as np
import numpy.typing as npt

_VERBS = (
    r"ignore|disregard|forget|override|bypass|say|respond|reply|print|output|pretend|act|repeat|reveal|translate|"
    r"write|answer|begin|start|stop|append|include|insert|replace|use|provide|generate|tell|list|explain|"
    r"summari[sz]e|rewrite|convert|format|do|don't|never|always|remember|from now on|instead|you"
)
# Each marker is one feature (1.0 when it matches the unit). They describe how instructions to a model are phrased,
# not any one attack set's strings: "ignore previous", fake system headers, role play, output demands aimed at the
# reader ("in your answer"), requests for the hidden prompt, jailbreak vocabulary, delimiter walls.
MARKERS: dict[str, re.Pattern[str]] = {
    "ignore_previous": re.compile(
        r"\b(ignore|disregard|forget|override|bypass|skip|drop)\b[^.!?\n]{0,40}?\b(previous|prior|above|earlier|"
        r"preceding|all|any|your|the|these|those|other)\b[^.!?\n]{0,30}?\b(instructions?|prompts?|rules?|directions?|"
        r"guidelines?|directives?|context|messages?|commands?|constraints?|programming|restrictions?)\b",
        re.IGNORECASE,
    ),
    "fake_system_header": re.compile(
        r"(^|\n|[\[<(#*|=-])\s*(important\s+)?(system|assistant|admin(istrator)?|developer|root|sudo|instructions?)"
        r"(\s+(notice|message|prompt|override|note|alert|update|instruction|command|mode))?\s*[:\]>)]"
        r"|<\|?(im_start|im_end|system|endoftext)\|?>|\[/?(INST|SYS)\]|###\s*(instruction|system|response)",
        re.IGNORECASE,
    ),
    "attention_header": re.compile(
        r"\b(important|attention|urgent|notice|warning|note to (the )?(ai|assistant|model|llm))\s*[:!]", re.IGNORECASE
    ),
    "role_play": re.compile(
        r"\b(you are (now|going to|a|an|my|no longer)|you're (now|going to)|act as|acting as|pretend (to be|you)|"
        r"role-?play|from now on|you will (now )?(be|act|respond|answer|reply)|you must (now )?(act|respond|answer|"
        r"reply|say|always|never)|stay in character|simulate)\b",
        re.IGNORECASE,
    ),
    "new_instructions": re.compile(
        r"\b(new|updated|real|actual|true|secret|hidden|additional) (instructions?|task|rules?|objective|directive|"
        r"orders?|prompt)\b",
        re.IGNORECASE,
    ),
    "say_quoted": re.compile(
        r"\b(say|respond|reply|output|print|write|answer|begin|start|end)\b[^.!?\n]{0,30}?\b(with|only|exactly|just)?"
        r"\s*[\"'“‘`]",
        re.IGNORECASE,
    ),
    "access_granted": re.compile(r"\baccess\s+granted\b", re.IGNORECASE),
    # The hidden prompt is "yours" or "the above": "show me the instructions for installing" is a user's question.
    # A negated request ("do not share your password") is a manual's advice to its reader, not a demand.
    "reveal_prompt": re.compile(
        r"(?<!not )(?<!n't )(?<!never )"
        r"\b(reveal|repeat|print|show|output|leak|tell me|give me|list|dump|spell out|recite|share|what (is|are))\b"
        r"[^.!?\n]{0,30}?\b(your|the above|above|previous|initial|original|hidden|secret|pre-?)\s+(system\s+)?"
        r"(instructions?|prompt|password|access code|passcode|rules|directives?)\b",
        re.IGNORECASE,
    ),
    "jailbreak_vocab": re.compile(
        r"\b(DAN|jailbr(eak|oken)|developer mode|no (restrictions|limits|filters|rules|ethics|morals)|unfiltered|"
        r"uncensored|amoral|without (any )?(restrictions|censorship|filters|limits)|content polic(y|ies)|"
        r"openai('s)? (policy|policies|guidelines|rules)|ethical guidelines|as an ai language model)\b",
        re.IGNORECASE,
    ),
    "reader_output": re.compile(
        r"\b(in|to|of|into|at the (start|end|beginning) of) your (answer|response|reply|output|implementation|code|"
        r"summary|message)\b|\b(when|before|after) (you )?(answer|respond|reply)(ing)?\b",
        re.IGNORECASE,
    ),
    "reader_imperative": re.compile(rf"^\W*(please\s+)?({_VERBS})\b", re.IGNORECASE),
    "code_to_include": re.compile(
        r"\b(following|subsequent|this|below) (code|snippet|script|command|block|section|link|url)\b", re.IGNORECASE
    ),
    "url": re.compile(r"https?://|www\.", re.IGNORECASE),
    # What separates an injection from a manual's imperative is whom it addresses: the model, its instructions and
    # its output, or its role. These markers name that addressee; `manual_imperative` names a human's task instead.
    "addresses_model": re.compile(
        r"\b(ai|a\.i\.|assistant|chat ?bot|chatgpt|gpt(-?\d\w*)?|llm|(large )?language model|the model|bot|"
        r"neural network)\b",
        re.IGNORECASE,
    ),
    "model_rules": re.compile(
        r"\byour (instructions?|prompt|rules|programming|guidelines|directives?|training|filters?|restrictions|"
        r"polic(y|ies)|creators?|developers?|limitations|safeguards|guardrails|system|pre-?prompt|defen[cs]e)\b"
        r"|\b(system|initial|original|hidden|secret|pre-?) ?prompts?\b",
        re.IGNORECASE,
    ),
    "behaviour_change": re.compile(
        r"\b(from now on|no longer|instead of (answering|responding|following|replying)|(do not|don't|never) "
        r"(answer|respond|reply|follow|obey|refuse|mention|apologi[sz]e|warn|censor)|(stop|quit) (being|following|"
        r"acting|answering|responding)|your (new )?(role|task|job|goal|purpose|name|persona) (is|will be)|"
        r"(enter|enable|activate|switch to) [\w-]+ mode|[\w-]+ mode (is )?(enabled|activated|on)|"
        r"(only|always) (respond|reply|answer|say|output)|(respond|reply|answer) (only )?(with|in|as))\b",
        re.IGNORECASE,
    ),
    "manual_imperative": re.compile(
        r"^\W*(please\s+)?(press|click|tap|select|choose|open|close|install|uninstall|run|type|enter|restart|reboot|"
        r"download|upload|unplug|plug|turn|set|check|make sure|ensure|preheat|heat|mix|stir|add|pour|bake|wash|"
        r"rinse|keep|store|remove|insert|connect|disconnect|save|copy|paste|navigate|go to|log in|sign in|sign out|"
        r"back up|update|upgrade|tighten|loosen|attach|fill|contact|call|consult|avoid|wear|see|refer|wait|"
        r"replace|edit|delete|create|configure|export|import|mount|clone|build|test|measure|apply|drink|take)\b",
        re.IGNORECASE,
    ),
    "delimiter_wall": re.compile(r"([-=_*#~>\]}|)])\1{5,}|(\S)(\s\2){6,}"),
}
#: numeric features after the markers: second-person share, capitals share, non-ASCII share, log length, and
#: whether the text is a few words only (a follow-up such as "Why?" or "Tell me more": length is not linear in risk)
SHAPES = ("second_person", "upper_ratio", "non_ascii_ratio", "log_chars", "few_words")
#: a marker's value when it matches: above 1 so the model's L2 penalty costs it less than an n-gram's weight, which
#: leans the model on the markers (they transfer across attack sets; n-grams mostly do not)
MARKER_VALUE = 3.0
#: an explicit override of the model's instructions ("ignore all previous instructions and …") is the marker benign
#: text almost never carries, whatever follows it: it counts double, so an ordinary request after it cannot hide it
OVERRIDE_VALUE = 2 * MARKER_VALUE
FEATURE_NAMES = (*MARKERS, *SHAPES)
N_DENSE = len(FEATURE_NAMES)

_WORD = re.compile(r"[a-z0-9']+")
_SECOND_PERSON = frozenset({"you", "your", "yours", "yourself", "you're", "you'll", "you've", "u"})


def word_count(text: str) -> int:
    """Return the number of words in a text, as the features count them."""
    return len(_WORD.findall(text.lower()))


def dense_features(text: str) -> npt.NDArray[np.float32]:
    """Return the marker (0, `MARKER_VALUE` or `OVERRIDE_VALUE`) and shape (in [0, 1]) features of one text."""
    out = np.zeros(N_DENSE, dtype=np.float32)
    for i, (name, pattern) in enumerate(MARKERS.items()):
        if pattern.search(text):
            out[i] = OVERRIDE_VALUE if name == "ignore_previous" else MARKER_VALUE
    words = _WORD.findall(text.lower())
    letters = [c for c in text if c.isalpha()]
    j = len(MARKERS)
    out[j] = min(1.0, 5.0 * sum(w in _SECOND_PERSON for w in words) / max(len(words), 1))
    out[j + 1] = sum(c.isupper() for c in letters) / max(len(letters), 1)
    out[j + 2] = sum(ord(c) > 127 for c in text) / max(len(text), 1)
    out[j + 3] = min(1.0, math.log1p(len(text)) / 10.0)
    out[j + 4] = 1.0 if len(words) <= 5 else 0.0
    return out


def hashed_ngrams(text: str, bits: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Return the buckets of the text's lower-cased word unigrams and bigrams (CRC32, `bits` bits) and their
    values: 1 per distinct bucket, scaled to unit length so long texts do not outweigh short ones."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    mask = (1 << bits) - 1
    buckets = np.array(sorted({zlib.crc32(g.encode()) & mask for g in grams}), dtype=np.int64)
    values = np.full(len(buckets), 1.0 / math.sqrt(max(len(buckets), 1)), dtype=np.float32)
    return buckets, values
