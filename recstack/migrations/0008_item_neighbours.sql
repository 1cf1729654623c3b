-- The item-item candidate source (EASE neighbours): for each history item, the items it points to and their
-- weights. One set at a time, written with the vectors by `recstack train` (model_version says which model).
CREATE TABLE IF NOT EXISTS item_neighbours (
    item_id       bigint PRIMARY KEY,
    neighbour_ids bigint[] NOT NULL,
    weights       real[] NOT NULL,
    model_version text NOT NULL
);
