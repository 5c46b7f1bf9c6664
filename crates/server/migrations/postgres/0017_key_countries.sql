-- The countries each key was used from (usage rows' `countries`, from Envoy's geoip filter):
-- the first one is the key's baseline, each later one raises `key.new_country`. At most 64
-- per key (the service stops recording past that).
CREATE TABLE key_countries (
    key_id      TEXT NOT NULL,
    country     TEXT NOT NULL,               -- ISO 3166-1 alpha-2, upper case
    first_seen  BIGINT NOT NULL,             -- Unix seconds
    PRIMARY KEY (key_id, country)
);
