"""Ingest: what a record is and how traffic becomes records.

The schema (:mod:`.schema`), validation of request bodies (:mod:`.validation`), column decoding
of all-numeric batches (:mod:`.columns`), batches (:mod:`.batch`), history files
(:mod:`.history`) and synthetic streams (:mod:`.streams`). The bottom stage: it imports no
other stage.
"""
