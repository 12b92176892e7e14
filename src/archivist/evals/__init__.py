"""Retrieval evaluation: trec_eval-compatible ranking metrics and paired significance tests."""
