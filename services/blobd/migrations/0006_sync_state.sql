-- Small named values the sync loop keeps across restarts (Unix milliseconds):
-- last_synced_ms, the start of the last cycle that reached every live peer without an error.
CREATE TABLE sync_state (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
