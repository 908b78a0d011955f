-- A re-authentication in place mints a new access token; the old one's
-- hash is kept so a caller still using it is told why it stopped working.
ALTER TABLE connections ADD COLUMN replaced_access_token_hash TEXT;
CREATE INDEX connections_replaced_access_token ON connections (replaced_access_token_hash);
