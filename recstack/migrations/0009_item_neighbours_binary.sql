-- Item-item rows are dense over the fitted head (2500 x 2500 weights): stored as packed little-endian arrays
-- (neighbour ids int64, weights float32) so that training writes and a serving replica loads them in well under a
-- second instead of parsing millions of array elements as text. The table is rewritten by every `recstack train`,
-- so the old rows are dropped rather than converted (serving falls back to its other sources until the next train).
DROP TABLE IF EXISTS item_neighbours;
CREATE TABLE item_neighbours (
    item_id       bigint PRIMARY KEY,
    neighbour_ids bytea NOT NULL,
    weights       bytea NOT NULL,
    model_version text NOT NULL
);
