-- Items no collaborative source can score (no cf vector yet) but the content source can: serving asks whether any
-- exist (serving/runtimes.py Retriever) to decide if the item-item order needs the content scan at all. Without this
-- index that question is a sequential scan (114 ms at 100k items); with it, an index probe.
CREATE INDEX IF NOT EXISTS item_vectors_cold_idx ON item_vectors (item_id) WHERE cf IS NULL AND content IS NOT NULL;
