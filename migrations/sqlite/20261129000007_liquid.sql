-- Whether Chatwoot may render Liquid in a reply ("liquid": true); otherwise
-- goldrelay sends it so that the customer reads exactly the approved text.
ALTER TABLE gold_replies ADD COLUMN liquid INTEGER NOT NULL DEFAULT 0;
