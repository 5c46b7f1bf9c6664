-- Retention deletes usage counts by age: find them by minute.
CREATE INDEX usage_counts_by_minute ON usage_counts (minute);
