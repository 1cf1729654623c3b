-- A counter that moves whenever a statement writes the catalog rows serving keeps in memory (item_vectors, and the
-- titles in items): a replica holding them (recstack.stages.item_table) re-reads the table when the counter moved,
-- instead of Postgres joining the item-item candidates' rows on every request. Statement-level: a COPY or a
-- 100k-row UPDATE bumps it once.
CREATE TABLE IF NOT EXISTS catalog_epoch (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    epoch bigint NOT NULL
);
INSERT INTO catalog_epoch (id, epoch) VALUES (true, 1) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION bump_catalog_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_epoch SET epoch = epoch + 1;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS item_vectors_epoch ON item_vectors;
CREATE TRIGGER item_vectors_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON item_vectors
    FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_epoch();
DROP TRIGGER IF EXISTS items_epoch ON items;
CREATE TRIGGER items_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON items
    FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_epoch();
