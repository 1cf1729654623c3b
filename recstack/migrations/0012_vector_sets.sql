-- Vectors versioned with the model: every `recstack train` stores the collaborative item and user vectors and the
-- item-item neighbours it fitted as a set keyed by the model's version; promoting a version (train, `models promote`,
-- `models rollback`) copies its set into the live tables serving reads (item_vectors.cf/popularity, user_vectors,
-- item_neighbours) in the same transaction as the promotion, so a rollback restores the ranker and the vectors it
-- was trained with. Content vectors follow the catalog's text, not a model, and are not versioned.
CREATE TABLE IF NOT EXISTS item_vector_sets (
    model_version text NOT NULL,
    item_id       bigint NOT NULL,
    popularity    real NOT NULL DEFAULT 0,
    cf            vector(64),                       -- NULL: the model saw no interaction with the item
    PRIMARY KEY (model_version, item_id)
);

CREATE TABLE IF NOT EXISTS user_vector_sets (
    model_version text NOT NULL,
    user_id       bigint NOT NULL,
    external_id   text NOT NULL,
    cf            vector(64) NOT NULL,
    PRIMARY KEY (model_version, user_id)
);

CREATE TABLE IF NOT EXISTS item_neighbour_sets (
    model_version text NOT NULL,
    item_id       bigint NOT NULL,
    neighbour_ids bytea NOT NULL,
    weights       bytea NOT NULL,
    PRIMARY KEY (model_version, item_id)
);

-- What serves today becomes the set of the model it came from, so that model can be rolled back to.
INSERT INTO item_vector_sets (model_version, item_id, popularity, cf)
SELECT model_version, item_id, popularity, cf FROM item_vectors WHERE model_version IS NOT NULL
ON CONFLICT DO NOTHING;
INSERT INTO user_vector_sets (model_version, user_id, external_id, cf)
SELECT model_version, user_id, external_id, cf FROM user_vectors WHERE model_version IS NOT NULL
ON CONFLICT DO NOTHING;
INSERT INTO item_neighbour_sets (model_version, item_id, neighbour_ids, weights)
SELECT model_version, item_id, neighbour_ids, weights FROM item_neighbours
ON CONFLICT DO NOTHING;
