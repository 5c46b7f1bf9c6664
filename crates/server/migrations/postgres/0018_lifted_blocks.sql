-- An automatic block an operator removed is lifted, not deleted: it stays until it would
-- have ended, so the revocation feed can tell every filter to lift it (and so the record
-- says when it was lifted).
ALTER TABLE address_blocks ADD COLUMN lifted_at BIGINT;  -- Unix seconds; NULL: in force
