-- Conversations offered to an agent, found by agent: every `auth` of a staff
-- member lists its open offers, and without this index that read went
-- through every waiting conversation (the state index), so connecting cost
-- grew with the length of the queues. Partial: only offered rows are indexed.
CREATE INDEX conversations_offered_to ON conversations(offered_to) WHERE offered_to IS NOT NULL;

-- Left messages by team in waiting order: an agent going online looks for
-- them, and through the state index that read every waiting conversation.
CREATE INDEX conversations_left_messages ON conversations(team_id, queued_at) WHERE pending = 1;
