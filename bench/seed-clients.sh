#!/usr/bin/env bash
# Adds COUNT personal clients (default 1,000,000) to a migrated database, straight in SQL, for
# measuring the service at scale: 1,000 users ("seed-user-0" ...), display names "seed-N", a few
# in every thousand revoked. Takes a minute or two per million rows.
# usage: bench/seed-clients.sh DATABASE_URL [COUNT]
#   DATABASE_URL: sqlite:///path/to/file.db?mode=rwc or postgres://user@host:port/db
# Needs the sqlite3 or psql command-line client.
set -eu
url=$1
count=${2:-1000000}
case "$url" in
sqlite://*)
  path=${url#sqlite://}
  path=${path%%\?*}
  sqlite3 "$path" <<SQL
PRAGMA journal_mode = WAL;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $count)
INSERT INTO personal_clients (id, client_id, user_id, display_name, display_name_folded,
  allow_source_cidr, scoped_roles, owner_roles, public_key, expires_at, last_used_at,
  created_at, updated_at, deleted_at)
SELECT randomblob(16), 'seed-' || i || '@localhost/pcc', 'seed-user-' || (i % 1000),
  'seed-' || i, 'seed-' || i, '["10.0.0.0/8"]', '[]', '["reader"]', randomblob(32),
  NULL, NULL, '2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00',
  CASE WHEN i % 200 = 0 THEN '2026-02-01T00:00:00.000000+00:00' END
FROM n;
ANALYZE;
SQL
  ;;
postgres://* | postgresql://*)
  psql -q -v ON_ERROR_STOP=1 "$url" <<SQL
INSERT INTO personal_clients (id, client_id, user_id, display_name, display_name_folded,
  allow_source_cidr, scoped_roles, owner_roles, public_key, expires_at, last_used_at,
  created_at, updated_at, deleted_at)
SELECT gen_random_uuid(), 'seed-' || i || '@localhost/pcc', 'seed-user-' || (i % 1000),
  'seed-' || i, 'seed-' || i, '["10.0.0.0/8"]', '[]', '["reader"]',
  decode(md5(i::text) || md5((i + 1)::text), 'hex'), NULL, NULL,
  '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00',
  CASE WHEN i % 200 = 0 THEN timestamptz '2026-02-01 00:00:00+00' END
FROM generate_series(1, $count) AS i;
ANALYZE personal_clients;
SQL
  ;;
*) echo "seed-clients.sh: DATABASE_URL must start with sqlite:// or postgres://" >&2; exit 2 ;;
esac
