-- Supabase serves tables in the public schema through its Data API. With row
-- level security on and no policies, only the tables' owner (goldrelay's own
-- role) and roles that bypass RLS can read them: the gold replies, which hold
-- customer conversations, are never exposed by accident. Plain PostgreSQL is
-- unaffected, since the owner is exempt.
ALTER TABLE gold_replies ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE chatwoot_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE _sqlx_migrations ENABLE ROW LEVEL SECURITY;
