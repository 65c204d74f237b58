-- Event retention deletes by age: find old events without a full scan.
CREATE INDEX IF NOT EXISTS events_at ON events (at);
