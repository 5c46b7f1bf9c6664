-- Geo-restrictions: the ISO 3166-1 alpha-2 codes (upper case) of the countries a key may be
-- used from, as Envoy's geoip filter reports them. '[]': anywhere.
ALTER TABLE keys ADD COLUMN allowed_countries TEXT NOT NULL DEFAULT '[]';  -- JSON array
